{{/*
Named templates of the audit-forwarder chart.

Public (for application charts, see the chart README, "Sidecar mode"):
  audit-forwarder.sidecar               the forwarder container, as a list item
  audit-forwarder.sidecarVolumes        the volumes it needs, as list items
  audit-forwarder.sidecarPodAnnotations checksum annotations that roll the pods on a config change
All three take the chart's own scope: `(index .Subcharts "audit-forwarder")`.

Everything else is internal. Paths inside the container are fixed: the image's
CMD reads /etc/audit-forwarder/config.yaml and its environment points the buffer
at /var/lib/audit-forwarder/buffer.db.
*/}}

{{- define "audit-forwarder.configDir" -}}/etc/audit-forwarder/config{{- end -}}
{{- define "audit-forwarder.configFile" -}}/etc/audit-forwarder/config/config.yaml{{- end -}}
{{- define "audit-forwarder.secretsDir" -}}/etc/audit-forwarder/secrets{{- end -}}
{{- define "audit-forwarder.dataDir" -}}/var/lib/audit-forwarder{{- end -}}
{{- define "audit-forwarder.defaultSocket" -}}/var/run/audit-forwarder/ingest.sock{{- end -}}

{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "audit-forwarder.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: `<release>-<chart>` unless the release name already contains the chart name. */}}
{{- define "audit-forwarder.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "audit-forwarder.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "audit-forwarder.selectorLabels" -}}
app.kubernetes.io/name: {{ include "audit-forwarder.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "audit-forwarder.labels" -}}
helm.sh/chart: {{ include "audit-forwarder.chart" . }}
{{ include "audit-forwarder.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: {{ .Values.mode }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "audit-forwarder.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "audit-forwarder.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "audit-forwarder.image" -}}
{{- $repository := .Values.image.repository }}
{{- if .Values.image.registry }}
{{- $repository = printf "%s/%s" .Values.image.registry $repository }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Unix socket path, or "" when the socket listener is off. */}}
{{- define "audit-forwarder.unixSocket" -}}
{{- if .Values.config.ingest.unixSocket }}
{{- .Values.config.ingest.unixSocket }}
{{- else if ne .Values.mode "standalone" }}
{{- include "audit-forwarder.defaultSocket" . }}
{{- end }}
{{- end }}

{{/* terminationGracePeriodSeconds: leave the daemon its shutdownGraceSeconds plus time to close the buffer. */}}
{{- define "audit-forwarder.terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add (int (ceil .Values.config.shutdownGraceSeconds)) 15 }}
{{- else }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
Render-time checks the JSON schema cannot express. Every template that
renders the configuration calls this, so a bad release fails before anything
is applied.
*/}}
{{- define "audit-forwarder.validate" -}}
{{- if not .Values.auditLogForwarders }}
{{- fail `auditLogForwarders is empty: the daemon needs at least one forwarder. Set for example:
  auditLogForwarders:
    - kind: webhook
      uri: https://webhook.site
      token: THE-SECRET-TOKEN
      method: POST` }}
{{- end }}
{{- $ingest := .Values.config.ingest }}
{{- if and $ingest.token $ingest.tokenSecretRef }}
{{- fail "config.ingest: set token or tokenSecretRef, not both" }}
{{- end }}
{{- if and (eq .Values.mode "standalone") (kindIs "invalid" $ingest.port) }}
{{- fail "config.ingest.port: standalone mode serves ingest through its Service; the port cannot be null" }}
{{- end }}
{{- range $index, $forwarder := .Values.auditLogForwarders }}
{{- if and $forwarder.token $forwarder.tokenSecretRef }}
{{- fail (printf "auditLogForwarders[%d]: set token or tokenSecretRef, not both" $index) }}
{{- end }}
{{- if and $forwarder.signingSecret $forwarder.signingSecretRef }}
{{- fail (printf "auditLogForwarders[%d]: set signingSecret or signingSecretRef, not both" $index) }}
{{- end }}
{{- end }}
{{- if not (kindIs "invalid" .Values.terminationGracePeriodSeconds) }}
{{- if le (float64 .Values.terminationGracePeriodSeconds) (float64 .Values.config.shutdownGraceSeconds) }}
{{- fail "terminationGracePeriodSeconds must be greater than config.shutdownGraceSeconds, or the kubelet kills the daemon while it drains" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The chart-managed Secret's data (base64), one key per inline secret:
ingest-token, forwarder-<index>-token, forwarder-<index>-signing-secret.
Renders "{}" when there is none.
*/}}
{{- define "audit-forwarder.secretData" -}}
{{- $data := dict }}
{{- if .Values.config.ingest.token }}
{{- $_ := set $data "ingest-token" (.Values.config.ingest.token | toString | b64enc) }}
{{- end }}
{{- range $index, $forwarder := .Values.auditLogForwarders }}
{{- if $forwarder.token }}
{{- $_ := set $data (printf "forwarder-%d-token" $index) ($forwarder.token | toString | b64enc) }}
{{- end }}
{{- if $forwarder.signingSecret }}
{{- $_ := set $data (printf "forwarder-%d-signing-secret" $index) ($forwarder.signingSecret | toString | b64enc) }}
{{- end }}
{{- end }}
{{- toYaml $data }}
{{- end }}

{{/* Secrets taken from existing Secrets: a YAML list of {name, key, path}. */}}
{{- define "audit-forwarder.secretRefs" -}}
{{- $refs := list }}
{{- with .Values.config.ingest.tokenSecretRef }}
{{- $refs = append $refs (dict "name" .name "key" .key "path" "ingest-token") }}
{{- end }}
{{- range $index, $forwarder := .Values.auditLogForwarders }}
{{- with $forwarder.tokenSecretRef }}
{{- $refs = append $refs (dict "name" .name "key" .key "path" (printf "forwarder-%d-token" $index)) }}
{{- end }}
{{- with $forwarder.signingSecretRef }}
{{- $refs = append $refs (dict "name" .name "key" .key "path" (printf "forwarder-%d-signing-secret" $index)) }}
{{- end }}
{{- end }}
{{- toYaml (dict "refs" $refs) }}
{{- end }}

{{/* "true" when the pod mounts any secret file. */}}
{{- define "audit-forwarder.hasSecrets" -}}
{{- $data := include "audit-forwarder.secretData" . | fromYaml }}
{{- $refs := (include "audit-forwarder.secretRefs" . | fromYaml).refs }}
{{- if or $data $refs }}true{{ end }}
{{- end }}

{{/*
The daemon's config.yaml. Secrets are replaced by *File keys pointing at the
mounted Secret; listener addresses and paths are the chart's.
*/}}
{{- define "audit-forwarder.config" -}}
{{- include "audit-forwarder.validate" . }}
{{- $secretsDir := include "audit-forwarder.secretsDir" . }}
{{- $c := .Values.config }}
{{- $ingest := dict "port" $c.ingest.port "maxRequestBytes" $c.ingest.maxRequestBytes "maxEventBytes" $c.ingest.maxEventBytes }}
{{- /* Standalone: reachable through the Service. Otherwise the pod's loopback only: the socket is the way in. */}}
{{- $_ := set $ingest "host" (ternary "0.0.0.0" "127.0.0.1" (eq .Values.mode "standalone")) }}
{{- $socket := include "audit-forwarder.unixSocket" . }}
{{- if $socket }}
{{- $_ := set $ingest "unixSocket" $socket }}
{{- end }}
{{- if or $c.ingest.token $c.ingest.tokenSecretRef }}
{{- $_ := set $ingest "tokenFile" (printf "%s/ingest-token" $secretsDir) }}
{{- end }}
{{- $buffer := dict "path" (printf "%s/buffer.db" (include "audit-forwarder.dataDir" .)) "synchronous" $c.buffer.synchronous "retentionHours" $c.buffer.retentionHours "historyMaxRows" $c.buffer.historyMaxRows }}
{{- if not (kindIs "invalid" $c.buffer.maxBytes) }}
{{- $_ := set $buffer "maxBytes" $c.buffer.maxBytes }}
{{- end }}
{{- $forwarders := list }}
{{- range $index, $forwarder := .Values.auditLogForwarders }}
{{- $rendered := omit $forwarder "token" "tokenSecretRef" "signingSecret" "signingSecretRef" }}
{{- if or $forwarder.token $forwarder.tokenSecretRef }}
{{- $_ := set $rendered "tokenFile" (printf "%s/forwarder-%d-token" $secretsDir $index) }}
{{- end }}
{{- if or $forwarder.signingSecret $forwarder.signingSecretRef }}
{{- $_ := set $rendered "signingSecretFile" (printf "%s/forwarder-%d-signing-secret" $secretsDir $index) }}
{{- end }}
{{- $forwarders = append $forwarders $rendered }}
{{- end }}
{{- $config := dict
  "ingest" $ingest
  "buffer" $buffer
  "metrics" (dict "host" "0.0.0.0" "port" .Values.metrics.port)
  "logging" $c.logging
  "shutdownGraceSeconds" $c.shutdownGraceSeconds
  "auditLogForwarders" $forwarders }}
{{- toYaml $config }}
{{- end }}

{{/* Pod annotations that roll the pods when the configuration or the chart's Secret changes. */}}
{{- define "audit-forwarder.checksums" -}}
checksum/config: {{ include "audit-forwarder.config" . | sha256sum }}
checksum/secret: {{ include "audit-forwarder.secretData" . | sha256sum }}
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
  ports:
    {{- if and (eq .Values.mode "standalone") (not (kindIs "invalid" .Values.config.ingest.port)) }}
    - name: ingest
      containerPort: {{ int .Values.config.ingest.port }}
      protocol: TCP
    {{- end }}
    {{- /* Port names are unique per pod: the sidecar's must not clash with the application's. */}}
    - name: {{ ternary "fwd-metrics" "metrics" $sidecar }}
      containerPort: {{ int .Values.metrics.port }}
      protocol: TCP
  {{- with .Values.probes.liveness }}
  {{- if .enabled }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: {{ int $.Values.metrics.port }}
    initialDelaySeconds: {{ int .initialDelaySeconds }}
    periodSeconds: {{ int .periodSeconds }}
    timeoutSeconds: {{ int .timeoutSeconds }}
    failureThreshold: {{ int .failureThreshold }}
  {{- end }}
  {{- end }}
  {{- with .Values.probes.readiness }}
  {{- if .enabled }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: {{ int $.Values.metrics.port }}
    initialDelaySeconds: {{ int .initialDelaySeconds }}
    periodSeconds: {{ int .periodSeconds }}
    timeoutSeconds: {{ int .timeoutSeconds }}
    failureThreshold: {{ int .failureThreshold }}
  {{- end }}
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
          name: {{ .name }}
          items:
            - key: {{ .key }}
              path: {{ .path }}
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
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
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
{{- end }}

{{/* Pod template annotations of the standalone Deployment and the DaemonSet. */}}
{{- define "audit-forwarder.podAnnotations" -}}
{{- if .Values.rollOnConfigChange }}
{{ include "audit-forwarder.checksums" . }}
{{- end }}
{{- if .Values.metrics.podAnnotations.enabled }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.metrics.port | int | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
=== Public templates for application charts (sidecar mode) ===
Call them with the subchart's scope, e.g.
  containers:
    - name: app
      ...
    {{- include "audit-forwarder.sidecar" (index .Subcharts "audit-forwarder") | nindent 4 }}
*/}}

{{/* The forwarder container, as a list item for `containers:` (or `initContainers:` with sidecar.native). */}}
{{- define "audit-forwarder.sidecar" -}}
{{- if ne .Values.mode "sidecar" }}
{{- fail "audit-forwarder.sidecar: set audit-forwarder.mode=sidecar in the application chart's values" }}
{{- end }}
{{- include "audit-forwarder.container" . }}
{{- end }}

{{/* The sidecar's volumes, as list items for `volumes:`; the socket volume is named audit-forwarder-socket. */}}
{{- define "audit-forwarder.sidecarVolumes" -}}
{{- if ne .Values.mode "sidecar" }}
{{- fail "audit-forwarder.sidecarVolumes: set audit-forwarder.mode=sidecar in the application chart's values" }}
{{- end }}
{{- include "audit-forwarder.volumes" . }}
{{- end }}

{{/* Annotations for the application's pod template: roll the pods when the forwarder's config or Secret changes. */}}
{{- define "audit-forwarder.sidecarPodAnnotations" -}}
{{- if .Values.rollOnConfigChange }}
checksum/audit-forwarder-config: {{ include "audit-forwarder.config" . | sha256sum }}
checksum/audit-forwarder-secret: {{ include "audit-forwarder.secretData" . | sha256sum }}
{{- end }}
{{- end }}
