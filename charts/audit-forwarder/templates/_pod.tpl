{{/*
The forwarder container, its volumes and the pod around it. The container and
its volumes are shared by every mode (the sidecar templates in _sidecar.tpl
hand them to an application chart); the pod spec is the Deployment's and the
DaemonSet's.
*/}}

{{/*
A probe's values: livenessProbe / readinessProbe / startupProbe, with the keys
of the deprecated probes.liveness / probes.readiness on top (an existing
values file keeps working). Takes (dict "root" $ "name" "liveness").
*/}}
{{- define "audit-forwarder.probeValues" -}}
{{- $current := get .root.Values (printf "%sProbe" .name) | default dict }}
{{- $legacy := get (.root.Values.probes | default dict) .name | default dict }}
{{- /* Key by key: merge would let a default `true` win over a legacy `enabled: false`. */}}
{{- $probe := deepCopy $current }}
{{- range $key, $value := $legacy }}
{{- $_ := set $probe $key $value }}
{{- end }}
{{- toYaml $probe }}
{{- end }}

{{/*
One probe: its values without `enabled`; the handler defaults to GET `path` on
the NAMED metrics port (`metrics`, or `fwd-metrics` for the sidecar), so a
changed metrics.port never leaves a probe behind. An httpGet without a port
gets that port too. Takes (dict "root" $ "probe" <values> "path" "/healthz").
*/}}
{{- define "audit-forwarder.probe" -}}
{{- $probe := omit .probe "enabled" }}
{{- $port := include "audit-forwarder.metricsPortName" .root }}
{{- if not (or $probe.httpGet $probe.tcpSocket $probe.exec $probe.grpc) }}
{{- $_ := set $probe "httpGet" (dict "path" .path "port" $port) }}
{{- else if and $probe.httpGet (not $probe.httpGet.port) }}
{{- $_ := set $probe "httpGet" (merge (dict "port" $port) $probe.httpGet) }}
{{- end }}
{{- toYaml $probe }}
{{- end }}

{{/* The forwarder container as a list item; used by every mode. */}}
{{- define "audit-forwarder.container" -}}
{{- $sidecar := eq .Values.mode "sidecar" }}
{{- $socket := include "audit-forwarder.unixSocket" . -}}
- name: audit-forwarder
  image: {{ include "audit-forwarder.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["run", "--config", {{ include "audit-forwarder.configFile" . | quote }}]
  {{- if and $sidecar .Values.sidecar.native }}
  restartPolicy: Always
  {{- end }}
  {{- with .Values.extraEnv }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.envFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    {{- if and (eq .Values.mode "standalone") (not (kindIs "invalid" .Values.config.ingest.port)) }}
    - name: ingest
      containerPort: {{ int .Values.config.ingest.port }}
      protocol: TCP
    {{- end }}
    - name: {{ include "audit-forwarder.metricsPortName" . }}
      containerPort: {{ int .Values.metrics.port }}
      protocol: TCP
  {{- range $kind, $path := dict "liveness" "/healthz" "readiness" "/readyz" "startup" "/healthz" }}
  {{- $probe := include "audit-forwarder.probeValues" (dict "root" $ "name" $kind) | fromYaml }}
  {{- if $probe.enabled }}
  {{ $kind }}Probe:
    {{- include "audit-forwarder.probe" (dict "root" $ "probe" $probe "path" $path) | nindent 4 }}
  {{- end }}
  {{- end }}
  {{- with .Values.lifecycle }}
  lifecycle:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    {{- /* A directory mount, not subPath: ConfigMap updates then reach the pod
         (an atomic ..data swap) and the daemon reloads them without a restart. */}}
    - name: audit-forwarder-config
      mountPath: {{ include "audit-forwarder.configDir" . }}
      readOnly: true
    {{- if include "audit-forwarder.hasSecrets" . }}
    - name: audit-forwarder-secrets
      mountPath: {{ include "audit-forwarder.secretsDir" . }}
      readOnly: true
    {{- end }}
    {{- with .Values.integrity.signingKeys }}
    {{- if .existingSecret }}
    - name: audit-forwarder-signing-keys
      mountPath: {{ .mountPath | quote }}
      readOnly: true
    {{- end }}
    {{- end }}
    {{- if include "audit-forwarder.bufferEncryption" . }}
    - name: audit-forwarder-buffer-keys
      mountPath: {{ .Values.config.buffer.encryption.mountPath | quote }}
      readOnly: true
    {{- end }}
    - name: audit-forwarder-buffer
      mountPath: {{ include "audit-forwarder.dataDir" . }}
    {{- if $socket }}
    - name: audit-forwarder-socket
      mountPath: {{ dir $socket }}
    {{- end }}
    {{- /* readOnlyRootFilesystem: SQLite and Python may still want a scratch directory. */}}
    - name: audit-forwarder-tmp
      mountPath: /tmp
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* The volumes of the forwarder container as list items; the buffer volume depends on the mode. */}}
{{- define "audit-forwarder.volumes" -}}
{{- $fullname := include "audit-forwarder.fullname" . }}
{{- $socket := include "audit-forwarder.unixSocket" . -}}
- name: audit-forwarder-config
  configMap:
    name: {{ $fullname }}
{{- if include "audit-forwarder.hasSecrets" . }}
- name: audit-forwarder-secrets
  projected:
    # 0440: readable by the daemon through fsGroup, by no one else.
    defaultMode: 288
    sources:
      {{- if include "audit-forwarder.secretData" . | fromYaml }}
      - secret:
          name: {{ $fullname }}
      {{- end }}
      {{- range (include "audit-forwarder.secretRefs" . | fromYaml).refs }}
      - secret:
          name: {{ .name | quote }}
          items:
            - key: {{ .key | quote }}
              path: {{ .path }}
      {{- end }}
{{- end }}
{{- /* Key material stays in the operator's own Secrets; the chart only mounts them, 0440 as above. */}}
{{- with .Values.integrity.signingKeys }}
{{- if .existingSecret }}
- name: audit-forwarder-signing-keys
  secret:
    secretName: {{ .existingSecret | quote }}
    defaultMode: 288
{{- end }}
{{- end }}
{{- if include "audit-forwarder.bufferEncryption" . }}
- name: audit-forwarder-buffer-keys
  secret:
    secretName: {{ .Values.config.buffer.encryption.existingSecret | quote }}
    defaultMode: 288
    items:
      {{- range .Values.config.buffer.encryption.keys }}
      - key: {{ .secretKey | quote }}
        path: {{ .secretKey | quote }}
      {{- end }}
{{- end }}
- name: audit-forwarder-buffer
{{- if eq .Values.mode "daemonset" }}
  hostPath:
    path: {{ .Values.daemonset.bufferHostPath }}
    type: DirectoryOrCreate
{{- else if eq .Values.mode "sidecar" }}
{{- if .Values.sidecar.bufferVolume }}
  {{- toYaml .Values.sidecar.bufferVolume | nindent 2 }}
{{- else }}
  emptyDir:
    sizeLimit: {{ .Values.persistence.emptyDirSizeLimit }}
{{- end }}
{{- else if .Values.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ default $fullname .Values.persistence.existingClaim }}
{{- else }}
  emptyDir:
    sizeLimit: {{ .Values.persistence.emptyDirSizeLimit }}
{{- end }}
{{- if $socket }}
- name: audit-forwarder-socket
{{- if eq .Values.mode "daemonset" }}
  hostPath:
    path: {{ .Values.daemonset.socketHostPath }}
    type: DirectoryOrCreate
{{- else }}
  emptyDir: {}
{{- end }}
{{- end }}
- name: audit-forwarder-tmp
  emptyDir:
    sizeLimit: 64Mi
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The pod spec of the standalone Deployment and the DaemonSet. */}}
{{- define "audit-forwarder.podSpec" -}}
serviceAccountName: {{ include "audit-forwarder.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
# The daemon reads AUDIT_FORWARDER_* variables: keep Service links out of its environment.
enableServiceLinks: false
terminationGracePeriodSeconds: {{ include "audit-forwarder.terminationGracePeriodSeconds" . }}
{{- with include "audit-forwarder.imagePullSecrets" . }}
imagePullSecrets:
  {{- . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if and (eq .Values.mode "daemonset") .Values.daemonset.volumePermissions }}
initContainers:
  # hostPath directories are created root-owned and fsGroup does not apply to
  # them: hand them to the daemon's user, with CAP_CHOWN and nothing else.
  - name: volume-permissions
    image: {{ include "audit-forwarder.image" . }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    command:
      - chown
      - "{{ int .Values.securityContext.runAsUser }}:{{ int .Values.securityContext.runAsGroup }}"
      - {{ include "audit-forwarder.dataDir" . }}
      - {{ dir (include "audit-forwarder.unixSocket" .) }}
    securityContext:
      runAsNonRoot: false
      runAsUser: 0
      runAsGroup: 0
      readOnlyRootFilesystem: true
      allowPrivilegeEscalation: false
      capabilities:
        drop:
          - ALL
        add:
          - CHOWN
      seccompProfile:
        type: RuntimeDefault
    volumeMounts:
      - name: audit-forwarder-buffer
        mountPath: {{ include "audit-forwarder.dataDir" . }}
      - name: audit-forwarder-socket
        mountPath: {{ dir (include "audit-forwarder.unixSocket" .) }}
{{- end }}
containers:
  {{- include "audit-forwarder.container" . | nindent 2 }}
volumes:
  {{- include "audit-forwarder.volumes" . | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.topologySpreadConstraints }}
{{- /* Through tpl: a labelSelector may name the chart's own labels. */}}
topologySpreadConstraints:
  {{- tpl (toYaml .) $ | nindent 2 }}
{{- end }}
{{- end }}

{{/* Pod template labels: the chart's labels and podLabels; the selector labels always win. */}}
{{- define "audit-forwarder.podLabels" -}}
{{- $selector := include "audit-forwarder.selectorLabels" . | fromYaml }}
{{- $labels := include "audit-forwarder.labels" . | fromYaml }}
{{- toYaml (merge $selector (.Values.podLabels | default dict) $labels) }}
{{- end }}

{{/* Pod template annotations of the Deployment and the DaemonSet ("" when none); the chart's own win over podAnnotations. */}}
{{- define "audit-forwarder.podAnnotations" -}}
{{- $annotations := dict }}
{{- if .Values.rollOnConfigChange }}
{{- $annotations = merge $annotations (include "audit-forwarder.checksums" . | fromYaml) }}
{{- end }}
{{- if .Values.metrics.podAnnotations.enabled }}
{{- $annotations = merge $annotations (dict
  "prometheus.io/scrape" "true"
  "prometheus.io/port" (.Values.metrics.port | int | toString)
  "prometheus.io/path" "/metrics") }}
{{- end }}
{{- $annotations = merge $annotations (.Values.podAnnotations | default dict) }}
{{- if $annotations }}
{{- toYaml $annotations }}
{{- end }}
{{- end }}
