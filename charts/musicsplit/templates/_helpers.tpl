{{/*
Names. `fullname` is the release-scoped prefix of every object; a component's
objects are "<fullname>-<component>" (musicsplit-operator, musicsplit-gateway
for a release named musicsplit, as in manifests/).
*/}}
{{- define "musicsplit.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "musicsplit.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "musicsplit.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "musicsplit.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* "<fullname>-<component>"; call with (dict "root" $ "component" "gateway"). */}}
{{- define "musicsplit.componentName" -}}
{{- printf "%s-%s" (include "musicsplit.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels of a component: stable for the life of a release (a
Deployment's selector cannot change). Call with (dict "root" $ "component" "gateway").
*/}}
{{- define "musicsplit.selectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-%s" (include "musicsplit.name" .root) .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end }}

{{/* Every object's labels. Call with (dict "root" $ "component" "gateway"). */}}
{{- define "musicsplit.labels" -}}
{{ include "musicsplit.selectorLabels" . }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: musicsplit
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
A musicsplit image: "<repository>:<tag><suffix>", the tag defaulting to the
chart's appVersion. Call with (dict "root" $ "image" .Values.gateway.image "suffix" "").
*/}}
{{- define "musicsplit.image" -}}
{{- printf "%s:%s%s" .image.repository (default .root.Chart.AppVersion .image.tag) (default "" .suffix) }}
{{- end }}

{{/*
An environment variable from a secret setting
  {value: "...", existingSecret: "", key: "..."}:
the user's own Secret when existingSecret is set, else the chart's Secret
(`secretName`) under `key`; nothing when neither holds a value.
Call with (dict "name" "ENV_NAME" "setting" .Values.x "secretName" "release-gateway").
*/}}
{{- define "musicsplit.secretEnv" -}}
{{- if .setting.existingSecret }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef: {name: {{ .setting.existingSecret | quote }}, key: {{ .setting.key | quote }}}
{{- else if .setting.value }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef: {name: {{ .secretName | quote }}, key: {{ .setting.key | quote }}}
{{- end }}
{{- end }}

{{/* Whether a secret setting holds something (its own Secret or a value). */}}
{{- define "musicsplit.secretSet" -}}
{{- if or .existingSecret .value }}true{{ end }}
{{- end }}

{{/*
A generated secret that survives upgrades: the value already in the cluster
(lookup; empty when rendering offline), else a new random one.
Call with (dict "root" $ "secret" NAME "key" KEY "length" 32).
*/}}
{{- define "musicsplit.generatedSecret" -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .secret }}
{{- if and $existing (hasKey $existing.data .key) }}
{{- index $existing.data .key | b64dec }}
{{- else }}
{{- randAlphaNum (int .length) }}
{{- end }}
{{- end }}

{{/* The restricted pod and container security settings every musicsplit pod runs with. */}}
{{- define "musicsplit.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile: {type: RuntimeDefault}
{{- end }}

{{- define "musicsplit.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: {drop: [ALL]}
{{- end }}

{{/* URLs of what the chart runs, for the components that talk to it. */}}
{{- /* The gateway's Redis: the bundled one (no password, a plain value), or redis.url, a secret
setting (the chart's Secret or the user's existingSecret). Call with (dict "root" $ "secretName" NAME). */}}
{{- define "musicsplit.redisEnv" -}}
{{- if .root.Values.redis.enabled }}
- {name: MUSICSPLIT_GATEWAY_REDIS_URL, value: {{ printf "redis://%s:6379/0" (include "musicsplit.componentName" (dict "root" .root "component" "redis")) | quote }}}
{{- else }}
{{- include "musicsplit.secretEnv" (dict "name" "MUSICSPLIT_GATEWAY_REDIS_URL" "setting" .root.Values.redis.url "secretName" .secretName) }}
{{- end }}
{{- end }}

{{- define "musicsplit.redisSet" -}}
{{- if or .Values.redis.enabled (include "musicsplit.secretSet" .Values.redis.url) }}true{{ end }}
{{- end }}

{{- define "musicsplit.unleashUrl" -}}
{{- if .Values.unleash.enabled }}
{{- printf "http://%s:4242/api" (include "musicsplit.componentName" (dict "root" . "component" "unleash")) }}
{{- else }}
{{- .Values.unleash.url }}
{{- end }}
{{- end }}

{{/* The Prometheus the operator's canary analysis asks: set, bundled, or kube-prometheus-stack's. */}}
{{- define "musicsplit.prometheusUrl" -}}
{{- if .Values.operator.prometheusUrl }}
{{- .Values.operator.prometheusUrl }}
{{- else if and .Values.quickstart.enabled .Values.quickstart.prometheus.enabled }}
{{- printf "http://%s.%s.svc:9090" (include "musicsplit.componentName" (dict "root" . "component" "prometheus")) .Release.Namespace }}
{{- else }}
{{- "http://prometheus-operated.monitoring.svc:9090" }}
{{- end }}
{{- end }}

{{/* The OTLP/HTTP endpoint traces go to: set (an existing collector), the bundled Jaeger, or none. */}}
{{- define "musicsplit.otlpEndpoint" -}}
{{- if .Values.tracing.otlpEndpoint }}
{{- .Values.tracing.otlpEndpoint }}
{{- else if and .Values.quickstart.enabled .Values.quickstart.jaeger.enabled }}
{{- printf "http://%s.%s.svc:4318" (include "musicsplit.componentName" (dict "root" . "component" "jaeger")) .Release.Namespace }}
{{- end }}
{{- end }}

{{/* Tracing environment (standard OTEL_* variables); empty when there is no endpoint. */}}
{{- define "musicsplit.tracingEnv" -}}
{{- $endpoint := include "musicsplit.otlpEndpoint" .root }}
{{- if $endpoint }}
- {name: OTEL_EXPORTER_OTLP_ENDPOINT, value: {{ $endpoint | quote }}}
- {name: OTEL_EXPORTER_OTLP_PROTOCOL, value: http/protobuf}
- {name: OTEL_SERVICE_NAME, value: {{ .service | quote }}}
- {name: OTEL_TRACES_SAMPLER, value: parentbased_traceidratio}
- {name: OTEL_TRACES_SAMPLER_ARG, value: {{ .root.Values.tracing.sampleRatio | toString | quote }}}
{{- end }}
{{- end }}

{{/*
The Unleash client token the gateway sends and the bundled server accepts:
(dict "name" SECRET "key" KEY), or nothing when there is none.
*/}}
{{- define "musicsplit.unleashTokenRef" -}}
{{- $t := .Values.unleash.apiToken }}
{{- if $t.existingSecret }}
{{- dict "name" $t.existingSecret "key" $t.key | toJson }}
{{- else if .Values.unleash.enabled }}
{{- dict "name" (include "musicsplit.componentName" (dict "root" . "component" "unleash")) "key" $t.key | toJson }}
{{- else if $t.value }}
{{- dict "name" (include "musicsplit.componentName" (dict "root" . "component" "gateway")) "key" $t.key | toJson }}
{{- end }}
{{- end }}

{{/*
Predictor endpoints of the gateway: the configured ones, else one per enabled
example model at the address where KServe applies its canary split (verified
in KServe's source: docs/getting-started.md "Where the split happens"):
- Knative (Serverless) mode: the predictor's Knative Service,
  <name>-predictor.<ns>.svc.cluster.local; its Route splits between revisions.
- Standard (RawDeployment) mode: no Service splits (each predictor's Service
  reaches its own pods, and on KServe v0.20 the operator names the stable
  predictor, so <name>-predictor does not exist); the split is on KServe's
  Gateway API HTTPRoute for the InferenceService's host, its status.url:
  KServe's default domainTemplate "{{ .Name }}-{{ .Namespace }}.{{ .IngressDomain }}"
  with examples.kserveIngress's domain and scheme.
Pinned requests go elsewhere: to the per-version URLs in the SeparationModels' status.
*/}}
{{- define "musicsplit.gatewayEndpoints" -}}
{{- $endpoints := .Values.gateway.endpoints }}
{{- if and (not $endpoints) .Values.examples.enabled }}
{{- $ns := default .Release.Namespace .Values.examples.namespace }}
{{- $ingress := .Values.examples.kserveIngress }}
{{- $standard := has .Values.examples.deploymentMode (list "RawDeployment" "Standard") }}
{{- range .Values.examples.models }}
{{- $url := printf "http://%s-predictor.%s.svc.cluster.local" . $ns }}
{{- if $standard }}
{{- $url = printf "%s://%s-%s.%s" $ingress.scheme . $ns $ingress.domain }}
{{- end }}
{{- $endpoints = append $endpoints (dict "model" . "url" $url "region" "local") }}
{{- end }}
{{- end }}
{{- $endpoints | toJson }}
{{- end }}

{{/*
Whether the gateway reads SeparationModels through the Kubernetes API: shadow
traffic (which version is the canary, where) and version pinning (where each
version answers on its own) both do, with one Role.
*/}}
{{- define "musicsplit.gatewayReadsModels" -}}
{{- if or .Values.gateway.shadow.enabled .Values.gateway.pinVersions }}true{{ end }}
{{- end }}

{{/*
The namespace whose SeparationModels the gateway reads: gateway.modelsNamespace,
else gateway.shadow.namespace (its name before pinning used it too; still
honoured), else the example models' when the chart creates them, else the release's.
*/}}
{{- define "musicsplit.gatewayModelsNamespace" -}}
{{- $gw := .Values.gateway }}
{{- if $gw.modelsNamespace }}
{{- $gw.modelsNamespace }}
{{- else if $gw.shadow.namespace }}
{{- $gw.shadow.namespace }}
{{- else if and .Values.examples.enabled .Values.examples.namespace }}
{{- .Values.examples.namespace }}
{{- else }}
{{- .Release.Namespace }}
{{- end }}
{{- end }}

{{/*
Refuse settings that cannot work: several gateway replicas on the embedded
stores (each would see only its own jobs, files and progress), Redis
backends with no Redis.
*/}}
{{- define "musicsplit.validate" -}}
{{- $gw := .Values.gateway }}
{{- if and $gw.enabled (or (gt (int $gw.replicas) 1) $gw.autoscaling.enabled) }}
{{- if not (include "musicsplit.secretSet" $gw.database.url) }}
{{- fail "gateway: more than one replica (replicas > 1 or autoscaling) needs a shared job store: set gateway.database.url (PostgreSQL)" }}
{{- end }}
{{- if not $gw.storage.url }}
{{- fail "gateway: more than one replica (replicas > 1 or autoscaling) needs shared storage: set gateway.storage.url (s3://bucket/prefix)" }}
{{- end }}
{{- if ne $gw.eventsBackend "redis" }}
{{- fail "gateway: more than one replica (replicas > 1 or autoscaling) needs gateway.eventsBackend: redis (progress events across replicas)" }}
{{- end }}
{{- if $gw.persistence.enabled }}
{{- fail "gateway: more than one replica (replicas > 1 or autoscaling) cannot share a ReadWriteOnce data volume: turn gateway.persistence off (the shared stores hold the state)" }}
{{- end }}
{{- end }}
{{- if and $gw.enabled (or (eq $gw.eventsBackend "redis") (eq $gw.cacheBackend "redis")) (not (include "musicsplit.redisSet" .)) }}
{{- fail "gateway: eventsBackend or cacheBackend is redis but there is no Redis: set redis.enabled or redis.url (value or existingSecret)" }}
{{- end }}
{{- if and .Values.quickstart.enabled .Values.quickstart.grafana.enabled .Values.monitoring.dashboards.namespace (ne .Values.monitoring.dashboards.namespace .Release.Namespace) }}
{{- fail "monitoring.dashboards.namespace: the bundled Grafana mounts the dashboard ConfigMaps from the release's namespace; leave it empty with quickstart.grafana" }}
{{- end }}
{{- if and $gw.modelsNamespace $gw.shadow.namespace (ne $gw.modelsNamespace $gw.shadow.namespace) }}
{{- fail "gateway: modelsNamespace and shadow.namespace (its former name) differ; the gateway reads SeparationModels in one namespace: set only gateway.modelsNamespace" }}
{{- end }}
{{- if and .Values.unleash.enabled (not .Values.unleash.postgresql.enabled) (not (include "musicsplit.secretSet" .Values.unleash.postgresql.externalUrl)) }}
{{- fail "unleash: the bundled server needs a database: set unleash.postgresql.enabled or unleash.postgresql.externalUrl" }}
{{- end }}
{{- end }}

{{/*
Labels every musicsplit predictor pod has: KServe's component label, and the
operator's mark on its InferenceService, which KServe copies to the pods
(router.MANAGED_BY in operator/musicsplit_operator/router.py).
*/}}
{{- define "musicsplit.predictorPodLabels" -}}
component: predictor
app.kubernetes.io/managed-by: musicsplit-operator
{{- end }}

{{/* The ConfigMap of one shipped dashboard. Call with (dict "root" $ "path" "files/dashboards/x.json"). */}}
{{- define "musicsplit.dashboardConfigMap" -}}
{{- include "musicsplit.componentName" (dict "root" .root "component" (printf "dashboard-%s" (base .path | trimSuffix ".json" | lower | replace "_" "-"))) }}
{{- end }}
