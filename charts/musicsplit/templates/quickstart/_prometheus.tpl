{{/*
The bundled Prometheus' configuration. Every scrape sets musicsplit_component
(docs/metrics.md), as the ServiceMonitors and the PodMonitor do: alerts select
by it, not by job.
*/}}
{{- define "musicsplit.prometheusConfig" -}}
{{- $p := .Values.quickstart.prometheus }}
{{- $fullname := include "musicsplit.fullname" . }}
global:
  scrape_interval: {{ $p.scrapeInterval }}
  evaluation_interval: {{ $p.scrapeInterval }}
rule_files:
  - rules/*.yaml
{{- if .Values.quickstart.alertmanager.enabled }}
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["{{ include "musicsplit.componentName" (dict "root" . "component" "alertmanager") }}:9093"]
{{- end }}
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ["localhost:9090"]
  {{- if .Values.operator.enabled }}
  - job_name: {{ $fullname }}-operator
    # The operator's series carry the SeparationModel's own `namespace`.
    honor_labels: true
    kubernetes_sd_configs:
      - role: pod
        namespaces: {names: [{{ .Release.Namespace }}]}
    relabel_configs:
      - action: keep
        source_labels: [__meta_kubernetes_pod_label_app_kubernetes_io_name, __meta_kubernetes_pod_label_app_kubernetes_io_instance, __meta_kubernetes_pod_container_port_name]
        regex: {{ include "musicsplit.name" . }}-operator;{{ .Release.Name }};metrics
      - {source_labels: [__meta_kubernetes_namespace], target_label: namespace}
      - {source_labels: [__meta_kubernetes_pod_name], target_label: pod}
      - {target_label: musicsplit_component, replacement: operator}
  {{- end }}
  {{- if .Values.gateway.enabled }}
  - job_name: {{ $fullname }}-gateway
    kubernetes_sd_configs:
      - role: pod
        namespaces: {names: [{{ .Release.Namespace }}]}
    relabel_configs:
      - action: keep
        source_labels: [__meta_kubernetes_pod_label_app_kubernetes_io_name, __meta_kubernetes_pod_label_app_kubernetes_io_instance, __meta_kubernetes_pod_container_port_name]
        regex: {{ include "musicsplit.name" . }}-gateway;{{ .Release.Name }};metrics
      - {source_labels: [__meta_kubernetes_namespace], target_label: namespace}
      - {source_labels: [__meta_kubernetes_pod_name], target_label: pod}
      - {target_label: musicsplit_component, replacement: gateway}
  {{- end }}
  # Predictor pods in any namespace (or predictor.namespaces): KServe's
  # component label and the operator's mark, copied from the InferenceService.
  - job_name: {{ $fullname }}-predictor
    kubernetes_sd_configs:
      - role: pod
        {{- with .Values.predictor.namespaces }}
        namespaces: {names: {{ toJson . }}}
        {{- end }}
    relabel_configs:
      - action: keep
        source_labels: [__meta_kubernetes_pod_label_component, __meta_kubernetes_pod_label_app_kubernetes_io_managed_by, __meta_kubernetes_pod_container_name, __meta_kubernetes_pod_container_port_number]
        regex: predictor;musicsplit-operator;kserve-container;8080
      - {source_labels: [__meta_kubernetes_namespace], target_label: namespace}
      - {source_labels: [__meta_kubernetes_pod_name], target_label: pod}
      - {target_label: musicsplit_component, replacement: predictor}
{{- end }}
