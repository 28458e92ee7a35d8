{{/*
The daemon's config.yaml and the chart's Secret. Secrets never reach the
ConfigMap: the config names files in the mounted Secret (*File keys).
*/}}

{{/*
The chart-managed Secret's data (base64), one key per inline secret:
ingest-token, forwarder-<index>-token, forwarder-<index>-signing-secret,
forwarder-<index>-client-secret (auth.clientSecret), forwarder-<index>-proxy-password,
forwarder-<index>-password (a NATS password), forwarder-<index>-integrity-signing-key
(integrity.signingKey inline; integrity.signingKeys mounts an existing Secret instead).
Renders "{}" when there is none.
*/}}
{{- define "audit-forwarder.secretData" -}}
{{- $data := dict }}
{{- if .Values.config.ingest.token }}
{{- $_ := set $data "ingest-token" (.Values.config.ingest.token | toString | b64enc) }}
{{- end }}
{{- range $index, $forwarder := include "audit-forwarder.forwarders" . | fromYamlArray }}
{{- if $forwarder.token }}
{{- $_ := set $data (printf "forwarder-%d-token" $index) ($forwarder.token | toString | b64enc) }}
{{- end }}
{{- if $forwarder.signingSecret }}
{{- /* A list (rotation) is one secret per line, as signingSecretFile reads it. */}}
{{- $signing := $forwarder.signingSecret }}
{{- if kindIs "slice" $signing }}
{{- $signing = join "\n" $signing }}
{{- end }}
{{- $_ := set $data (printf "forwarder-%d-signing-secret" $index) ($signing | toString | b64enc) }}
{{- end }}
{{- with $forwarder.auth }}
{{- if .clientSecret }}
{{- $_ := set $data (printf "forwarder-%d-client-secret" $index) (.clientSecret | toString | b64enc) }}
{{- end }}
{{- end }}
{{- with $forwarder.proxy }}
{{- if .password }}
{{- $_ := set $data (printf "forwarder-%d-proxy-password" $index) (.password | toString | b64enc) }}
{{- end }}
{{- end }}
{{- if $forwarder.password }}
{{- $_ := set $data (printf "forwarder-%d-password" $index) ($forwarder.password | toString | b64enc) }}
{{- end }}
{{- with $forwarder.integrity }}
{{- if .signingKey }}
{{- $_ := set $data (printf "forwarder-%d-integrity-signing-key" $index) (.signingKey | toString | b64enc) }}
{{- end }}
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
{{- range $index, $forwarder := include "audit-forwarder.forwarders" . | fromYamlArray }}
{{- with $forwarder.tokenSecretRef }}
{{- $refs = append $refs (dict "name" .name "key" .key "path" (printf "forwarder-%d-token" $index)) }}
{{- end }}
{{- with $forwarder.signingSecretRef }}
{{- $refs = append $refs (dict "name" .name "key" .key "path" (printf "forwarder-%d-signing-secret" $index)) }}
{{- end }}
{{- with $forwarder.passwordSecretRef }}
{{- $refs = append $refs (dict "name" .name "key" .key "path" (printf "forwarder-%d-password" $index)) }}
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
{{- /* Set only when given: the daemon's own defaults otherwise. */}}
{{- range $key := list "maxConnections" "idleTimeoutSeconds" "requestTimeoutSeconds" }}
{{- if not (kindIs "invalid" (index $c.ingest $key)) }}
{{- $_ := set $ingest $key (index $c.ingest $key) }}
{{- end }}
{{- end }}
{{- if or $c.ingest.token $c.ingest.tokenSecretRef }}
{{- $_ := set $ingest "tokenFile" (printf "%s/ingest-token" $secretsDir) }}
{{- end }}
{{- $buffer := dict "path" (printf "%s/buffer.db" (include "audit-forwarder.dataDir" .)) "synchronous" $c.buffer.synchronous "retentionHours" $c.buffer.retentionHours "historyMaxRows" $c.buffer.historyMaxRows }}
{{- if not (kindIs "invalid" $c.buffer.maxBytes) }}
{{- $_ := set $buffer "maxBytes" $c.buffer.maxBytes }}
{{- end }}
{{- with include "audit-forwarder.bufferEncryption" . }}
{{- $_ := set $buffer "encryption" (fromYaml .) }}
{{- end }}
{{- $forwarders := list }}
{{- range $index, $forwarder := include "audit-forwarder.forwarders" . | fromYamlArray }}
{{- $rendered := omit $forwarder "token" "tokenSecretRef" "signingSecret" "signingSecretRef" "password" "passwordSecretRef" }}
{{- if or $forwarder.token $forwarder.tokenSecretRef }}
{{- $_ := set $rendered "tokenFile" (printf "%s/forwarder-%d-token" $secretsDir $index) }}
{{- end }}
{{- if or $forwarder.signingSecret $forwarder.signingSecretRef }}
{{- $_ := set $rendered "signingSecretFile" (printf "%s/forwarder-%d-signing-secret" $secretsDir $index) }}
{{- end }}
{{- /* The OAuth2 client secret and the proxy password: in the Secret too, named by *File keys. */}}
{{- with $forwarder.auth }}
{{- if .clientSecret }}
{{- $auth := omit . "clientSecret" }}
{{- $_ := set $auth "clientSecretFile" (printf "%s/forwarder-%d-client-secret" $secretsDir $index) }}
{{- $_ := set $rendered "auth" $auth }}
{{- end }}
{{- end }}
{{- with $forwarder.proxy }}
{{- if .password }}
{{- $proxy := omit . "password" }}
{{- $_ := set $proxy "passwordFile" (printf "%s/forwarder-%d-proxy-password" $secretsDir $index) }}
{{- $_ := set $rendered "proxy" $proxy }}
{{- end }}
{{- end }}
{{- /* A NATS password, and an inline integrity key: the same, in the Secret. */}}
{{- if or $forwarder.password $forwarder.passwordSecretRef }}
{{- $_ := set $rendered "passwordFile" (printf "%s/forwarder-%d-password" $secretsDir $index) }}
{{- end }}
{{- with $forwarder.integrity }}
{{- if .signingKey }}
{{- $integrity := omit . "signingKey" }}
{{- $_ := set $integrity "signingKeyFile" (printf "%s/forwarder-%d-integrity-signing-key" $secretsDir $index) }}
{{- $_ := set $rendered "integrity" $integrity }}
{{- end }}
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
{{- with $c.delivery }}
{{- if not (kindIs "invalid" .process) }}
{{- $_ := set $config "delivery" (dict "process" .process) }}
{{- end }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* Pod annotations that roll the pods when the configuration or the chart's Secret changes. */}}
{{- define "audit-forwarder.checksums" -}}
checksum/config: {{ include "audit-forwarder.config" . | sha256sum }}
checksum/secret: {{ include "audit-forwarder.secretData" . | sha256sum }}
{{- end }}

{{/*
The daemon's buffer.encryption, as YAML: every key of
config.buffer.encryption.keys as {id, file} under the mount path, and the
active key (the only one when there is one). "" when the buffer is not
encrypted.
*/}}
{{- define "audit-forwarder.bufferEncryption" -}}
{{- $encryption := .Values.config.buffer.encryption | default dict }}
{{- if $encryption.keys }}
{{- $keys := list }}
{{- range $encryption.keys }}
{{- $keys = append $keys (dict "id" .id "file" (printf "%s/%s" $encryption.mountPath .secretKey)) }}
{{- end }}
{{- toYaml (dict "keys" $keys "active" (default (first $encryption.keys).id $encryption.active)) }}
{{- end }}
{{- end }}
