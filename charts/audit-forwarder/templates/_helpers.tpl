{{/*
Named templates of the audit-forwarder chart, by file:
  _helpers.tpl     names, labels, the image, the forwarders list, render-time
                   checks (key mounts included), the Prometheus Operator
                   capability gate
  _config.tpl      the daemon's config.yaml and the chart's Secret
  _pod.tpl         the forwarder container, its volumes, probes and the pod spec
  _monitoring.tpl  what the ServiceMonitor and the PodMonitor share
  _sidecar.tpl     the public templates for application charts (sidecar mode)

Paths inside the container are fixed: the image's CMD reads
/etc/audit-forwarder/config.yaml and its environment points the buffer at
/var/lib/audit-forwarder/buffer.db.
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

{{/*
Full name of every resource:
  fullnameOverride when set;
  the release name alone when it already contains the chart name
  (`audit-forwarder-prod`) or is the first word of it (`audit` for
  `audit-forwarder`: a prefix followed by "-");
  `<release>-<chart>` otherwise.
*/}}
{{- define "audit-forwarder.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if or (contains $name .Release.Name) (hasPrefix (printf "%s-" .Release.Name) $name) }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "audit-forwarder.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: never change them, a Deployment's selector is immutable. */}}
{{- define "audit-forwarder.selectorLabels" -}}
app.kubernetes.io/name: {{ include "audit-forwarder.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The role the pods play, for app.kubernetes.io/component (not a selector label). */}}
{{- define "audit-forwarder.component" -}}
{{- get (dict "standalone" "forwarder" "daemonset" "node-agent" "sidecar" "sidecar") .Values.mode }}
{{- end }}

{{/* Labels of every resource; commonLabels cannot override the chart's own. */}}
{{- define "audit-forwarder.labels" -}}
{{- $standard := dict
  "helm.sh/chart" (include "audit-forwarder.chart" .)
  "app.kubernetes.io/version" .Chart.AppVersion
  "app.kubernetes.io/managed-by" .Release.Service
  "app.kubernetes.io/component" (include "audit-forwarder.component" .) }}
{{- $selector := include "audit-forwarder.selectorLabels" . | fromYaml }}
{{- toYaml (merge $selector $standard (.Values.commonLabels | default dict)) }}
{{- end }}

{{- define "audit-forwarder.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "audit-forwarder.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference. No public image exists, so there is no default
repository: a release that runs the daemon must name its own build.
*/}}
{{- define "audit-forwarder.image" -}}
{{- if not .Values.image.repository }}
{{- fail (printf `image.repository is not set: no public audit-forwarder image is published. Build the image from the repository's Dockerfile and push it to a registry your cluster pulls from:
  docker build -t REGISTRY/audit-forwarder:%[1]s .
  docker push REGISTRY/audit-forwarder:%[1]s
then set image.repository=REGISTRY/audit-forwarder (image.tag defaults to the chart's appVersion, %[1]s).` .Chart.AppVersion) }}
{{- end }}
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

{{/* image.pullSecrets and its alias imagePullSecrets, as `- name:` list items ("" when none). */}}
{{- define "audit-forwarder.imagePullSecrets" -}}
{{- $names := list }}
{{- range concat (.Values.image.pullSecrets | default list) (.Values.imagePullSecrets | default list) }}
{{- if kindIs "string" . }}
{{- $names = append $names . }}
{{- else }}
{{- $names = append $names .name }}
{{- end }}
{{- end }}
{{- range uniq $names }}
- name: {{ . }}
{{- end }}
{{- end }}

{{/*
The forwarders as a YAML list: auditLogForwarders, or Chainloop's nesting
backend.auditLogForwarders (its chart's values put them there). Callers parse
it with fromYamlArray.
*/}}
{{- define "audit-forwarder.forwarders" -}}
{{- $top := .Values.auditLogForwarders | default list }}
{{- $nested := (.Values.backend | default dict).auditLogForwarders | default list }}
{{- if and $top $nested }}
{{- fail "auditLogForwarders and backend.auditLogForwarders are both set: keep one list. backend.auditLogForwarders is accepted for Chainloop's values layout; move its entries under the top-level auditLogForwarders and remove backend" }}
{{- end }}
{{- toYaml (default $nested $top) }}
{{- end }}

{{/*
"true" when there is at least one forwarder. Without one the daemon cannot
start, so the chart renders only its NOTES (and extraObjects): `helm lint`
and chart-testing with the default values pass, and nothing crash-loops.
*/}}
{{- define "audit-forwarder.configured" -}}
{{- if include "audit-forwarder.forwarders" . | fromYamlArray }}true{{ end }}
{{- end }}

{{/* The Unix socket path, or "" when the socket listener is off. */}}
{{- define "audit-forwarder.unixSocket" -}}
{{- if .Values.config.ingest.unixSocket }}
{{- .Values.config.ingest.unixSocket }}
{{- else if ne .Values.mode "standalone" }}
{{- include "audit-forwarder.defaultSocket" . }}
{{- end }}
{{- end }}

{{/* The container's metrics port name; unique per pod, so the sidecar's must not clash with the application's. */}}
{{- define "audit-forwarder.metricsPortName" -}}
{{- ternary "fwd-metrics" "metrics" (eq .Values.mode "sidecar") }}
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
Capability gate for the Prometheus Operator kinds. Renders "true" when an
object of `kind` (ServiceMonitor, PodMonitor, PrometheusRule) may be rendered:
the cluster serves monitoring.coreos.com/v1/<kind>, or metrics.monitoringApi
is "force" (`helm template` for GitOps, or CRDs installed in the same sync).
Without the gate, `helm install` fails on a cluster without the operator.
  {{- if include "audit-forwarder.monitoringApiAvailable" (dict "root" $ "kind" "ServiceMonitor") }}
*/}}
{{- define "audit-forwarder.monitoringApiAvailable" -}}
{{- if eq .root.Values.metrics.monitoringApi "force" }}true
{{- else if .root.Capabilities.APIVersions.Has (printf "monitoring.coreos.com/v1/%s" .kind) }}true
{{- end }}
{{- end }}

{{/*
Render-time checks the JSON schema cannot express. Every template that
renders the configuration calls this, so a bad release fails before anything
is applied.
*/}}
{{- define "audit-forwarder.validate" -}}
{{- $forwarders := include "audit-forwarder.forwarders" . | fromYamlArray }}
{{- if not $forwarders }}
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
{{- range $index, $forwarder := $forwarders }}
{{- if and $forwarder.token $forwarder.tokenSecretRef }}
{{- fail (printf "auditLogForwarders[%d]: set token or tokenSecretRef, not both" $index) }}
{{- end }}
{{- if and $forwarder.signingSecret $forwarder.signingSecretRef }}
{{- fail (printf "auditLogForwarders[%d]: set signingSecret or signingSecretRef, not both" $index) }}
{{- end }}
{{- if and $forwarder.password $forwarder.passwordSecretRef }}
{{- fail (printf "auditLogForwarders[%d]: set password or passwordSecretRef, not both" $index) }}
{{- end }}
{{- include "audit-forwarder.validateIntegrity" (dict "root" $ "index" $index "integrity" $forwarder.integrity) }}
{{- end }}
{{- include "audit-forwarder.validateKeyMounts" . }}
{{- if not (kindIs "invalid" .Values.terminationGracePeriodSeconds) }}
{{- if le (float64 .Values.terminationGracePeriodSeconds) (float64 .Values.config.shutdownGraceSeconds) }}
{{- fail "terminationGracePeriodSeconds must be greater than config.shutdownGraceSeconds, or the kubelet kills the daemon while it drains" }}
{{- end }}
{{- end }}
{{- if and (eq .Values.service.type "ClusterIP") (or .Values.service.nodePorts.ingest .Values.service.nodePorts.metrics) }}
{{- fail "service.nodePorts: a ClusterIP Service has no node ports; set service.type to NodePort or LoadBalancer" }}
{{- end }}
{{- with .Values.networkPolicy }}
{{- if and .enabled .egress.restrict (not .egress.rules) }}
{{- fail "networkPolicy.egress.restrict: with no networkPolicy.egress.rules the daemon cannot reach any forwarder; list the receivers (ipBlock, namespaceSelector...) in egress.rules" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A forwarder's integrity block: exactly one key, and a key file under
integrity.signingKeys.mountPath only when that Secret is mounted.
Takes (dict "root" $ "index" N "integrity" <values or nil>).
*/}}
{{- define "audit-forwarder.validateIntegrity" -}}
{{- with .integrity }}
{{- $where := printf "auditLogForwarders[%d].integrity" $.index }}
{{- $keys := $.root.Values.integrity.signingKeys }}
{{- if and .signingKey .signingKeyFile }}
{{- fail (printf "%s: set signingKeyFile or signingKey, not both" $where) }}
{{- end }}
{{- if not (or .signingKey .signingKeyFile) }}
{{- fail (printf "%s: checkpoints are signed: set signingKeyFile to an Ed25519 key mounted with integrity.signingKeys (e.g. %s/siem.key)" $where $keys.mountPath) }}
{{- end }}
{{- if and .signingKeyFile (hasPrefix (printf "%s/" $keys.mountPath) .signingKeyFile) (not $keys.existingSecret) }}
{{- fail (printf "%s.signingKeyFile is under integrity.signingKeys.mountPath (%s) but integrity.signingKeys.existingSecret is not set, so nothing is mounted there: name the Secret holding the key" $where $keys.mountPath) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The key mounts: buffer encryption needs its Secret and a consistent key list,
and neither key directory may land on (or over) a directory the chart mounts.
*/}}
{{- define "audit-forwarder.validateKeyMounts" -}}
{{- $encryption := .Values.config.buffer.encryption }}
{{- $taken := dict
  "the config directory" (include "audit-forwarder.configDir" .)
  "the secrets directory" (include "audit-forwarder.secretsDir" .)
  "the buffer directory" (include "audit-forwarder.dataDir" .)
  "/tmp" "/tmp" }}
{{- with include "audit-forwarder.unixSocket" . }}
{{- $_ := set $taken "the socket directory" (dir .) }}
{{- end }}
{{- if $encryption.keys }}
{{- if not $encryption.existingSecret }}
{{- fail "config.buffer.encryption.keys are listed but config.buffer.encryption.existingSecret is not set: the keys are read from an existing Secret, never from values. Create one (head -c 32 /dev/urandom > k1.key; kubectl create secret generic audit-buffer-keys --from-file=k1.key) and set existingSecret to its name" }}
{{- end }}
{{- $ids := list }}
{{- $secretKeys := list }}
{{- range $encryption.keys }}
{{- if has .id $ids }}
{{- fail (printf "config.buffer.encryption.keys: the id %s is listed twice" .id) }}
{{- end }}
{{- if has .secretKey $secretKeys }}
{{- fail (printf "config.buffer.encryption.keys: the secretKey %s is listed twice" .secretKey) }}
{{- end }}
{{- $ids = append $ids .id }}
{{- $secretKeys = append $secretKeys .secretKey }}
{{- end }}
{{- if and (gt (len $ids) 1) (not $encryption.active) }}
{{- fail (printf "config.buffer.encryption.active: with several keys (%s), name the one new batches are encrypted with" (join ", " $ids)) }}
{{- end }}
{{- if and $encryption.active (not (has $encryption.active $ids)) }}
{{- fail (printf "config.buffer.encryption.active: %s is not the id of a key in config.buffer.encryption.keys (%s)" $encryption.active (join ", " $ids)) }}
{{- end }}
{{- if .Values.integrity.signingKeys.existingSecret }}
{{- $_ := set $taken "integrity.signingKeys.mountPath" .Values.integrity.signingKeys.mountPath }}
{{- end }}
{{- include "audit-forwarder.checkMountPath" (dict "name" "config.buffer.encryption.mountPath" "path" $encryption.mountPath "taken" $taken) }}
{{- else if or $encryption.existingSecret $encryption.active }}
{{- fail "config.buffer.encryption: existingSecret or active is set but keys is empty; list the Secret's keys, e.g. keys: [{id: k1, secretKey: k1.key}] (nothing is encrypted without them)" }}
{{- end }}
{{- with .Values.integrity.signingKeys }}
{{- if .existingSecret }}
{{- $_ := unset $taken "integrity.signingKeys.mountPath" }}
{{- include "audit-forwarder.checkMountPath" (dict "name" "integrity.signingKeys.mountPath" "path" .mountPath "taken" $taken) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Fails when (dict "name" N "path" P "taken" {what: dir}) puts P on, inside or over a taken directory. */}}
{{- define "audit-forwarder.checkMountPath" -}}
{{- range $what, $dir := .taken }}
{{- if or (eq $.path $dir) (hasPrefix (printf "%s/" $dir) $.path) (hasPrefix (printf "%s/" $.path) $dir) }}
{{- fail (printf "%s (%s) overlaps %s (%s): choose a directory of its own" $.name $.path $what $dir) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Labels of the `helm test` pod. It must never carry both selector labels, or
the Service would send ingest traffic to it.
*/}}
{{- define "audit-forwarder.testSelectorLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: helm-test
{{- end }}

{{- define "audit-forwarder.testLabels" -}}
{{- $standard := dict
  "helm.sh/chart" (include "audit-forwarder.chart" .)
  "app.kubernetes.io/version" .Chart.AppVersion
  "app.kubernetes.io/managed-by" .Release.Service
  "app.kubernetes.io/part-of" (include "audit-forwarder.name" .) }}
{{- $common := omit (.Values.commonLabels | default dict) "app.kubernetes.io/name" }}
{{- toYaml (merge (include "audit-forwarder.testSelectorLabels" . | fromYaml) $standard $common) }}
{{- end }}
