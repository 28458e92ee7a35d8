{{/*
=== Public templates for application charts (sidecar mode) ===
Each takes this chart's own scope, `(index .Subcharts "audit-forwarder")`:
  audit-forwarder.sidecar                   the forwarder container, as a list item
  audit-forwarder.sidecarVolumes            the volumes it needs, as list items
  audit-forwarder.sidecarPodAnnotations     checksum annotations that roll the pods on a config change
  audit-forwarder.sidecarImagePullSecrets   image.pullSecrets as `imagePullSecrets` list items ("" when none)
e.g.
  containers:
    - name: app
      ...
    {{- include "audit-forwarder.sidecar" (index .Subcharts "audit-forwarder") | nindent 4 }}
Everything else in this chart is internal.
*/}}

{{/* The forwarder container, as a list item for `containers:` (or `initContainers:` with sidecar.native). */}}
{{- define "audit-forwarder.sidecar" -}}
{{- if ne .Values.mode "sidecar" }}
{{- fail "audit-forwarder.sidecar: set audit-forwarder.mode=sidecar in the application chart's values" }}
{{- end }}
{{- include "audit-forwarder.validate" . }}
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

{{/* The forwarder image's pull secrets, as list items for the application pod's `imagePullSecrets:`. */}}
{{- define "audit-forwarder.sidecarImagePullSecrets" -}}
{{- include "audit-forwarder.imagePullSecrets" . }}
{{- end }}
