{{/*
What the ServiceMonitor and the PodMonitor share: their labels and the scrape
endpoint. The capability gate for both (and for the PrometheusRule) is
"audit-forwarder.monitoringApiAvailable" in _helpers.tpl.
*/}}

{{/* A monitor's labels: the chart's, then `labels` (the older name), then additionalLabels. Takes (dict "root" $ "monitor" <values>). */}}
{{- define "audit-forwarder.monitorLabels" -}}
{{- $labels := include "audit-forwarder.labels" .root | fromYaml }}
{{- toYaml (merge (.monitor.additionalLabels | default dict) (.monitor.labels | default dict) $labels) }}
{{- end }}

{{/* One scrape endpoint of /metrics on the named port. Takes (dict "monitor" <values> "port" "metrics"). */}}
{{- define "audit-forwarder.scrapeEndpoint" -}}
{{- $monitor := .monitor -}}
- port: {{ .port }}
  path: /metrics
  interval: {{ $monitor.interval }}
  scrapeTimeout: {{ $monitor.scrapeTimeout }}
  {{- if $monitor.honorLabels }}
  honorLabels: true
  {{- end }}
  {{- with $monitor.scheme }}
  scheme: {{ . }}
  {{- end }}
  {{- with $monitor.tlsConfig }}
  tlsConfig:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $monitor.relabelings }}
  relabelings:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $monitor.metricRelabelings }}
  metricRelabelings:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
