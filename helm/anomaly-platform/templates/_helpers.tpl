{{/* ------------------------------------------------------------------ names */}}

{{- define "anomaly-platform.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or the release name alone when it already contains the chart
name. Kept to 30 characters: KServe names the predictor Service "<isvc>-predictor" (and Knative
its revisions "<isvc>-predictor-00001"), which must still fit a 63-character DNS label with
the longest InferenceService name, "<fullname>-isolation-forest".
*/}}
{{- define "anomaly-platform.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 30 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 30 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 30 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "anomaly-platform.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of a component's resources: <fullname>-<component>. Args: ctx, component. */}}
{{- define "anomaly-platform.componentName" -}}
{{- printf "%s-%s" (include "anomaly-platform.fullname" .ctx) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name of one model server: isolation_forest -> <fullname>-isolation-forest. */}}
{{- define "anomaly-platform.servingName" -}}
{{- printf "%s-%s" (include "anomaly-platform.fullname" .ctx) (.model | replace "_" "-") | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* ------------------------------------------------------------------ labels */}}

{{/* Standard labels. Args: ctx, component, [model]. */}}
{{- define "anomaly-platform.labels" -}}
helm.sh/chart: {{ include "anomaly-platform.chart" .ctx }}
{{ include "anomaly-platform.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: anomaly-platform
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels (immutable on Deployments: never add to them). Args: ctx, component, [model]. */}}
{{- define "anomaly-platform.selectorLabels" -}}
app.kubernetes.io/name: {{ include "anomaly-platform.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- with .model }}
anomaly.platform/model: {{ . }}
{{- end }}
{{- end }}

{{/* ------------------------------------------------------------------ images and pods */}}

{{/* registry/repository:tag or @digest. Args: ctx, image. */}}
{{- define "anomaly-platform.image" -}}
{{- $repo := .image.repository -}}
{{- if .image.registry }}{{ $repo = printf "%s/%s" .image.registry .image.repository }}{{ end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repo .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (.image.tag | default .ctx.Chart.AppVersion) -}}
{{- end -}}
{{- end }}

{{- define "anomaly-platform.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "anomaly-platform.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "anomaly-platform.podSecurityContext" -}}
{{ toYaml .Values.podSecurityContext }}
{{- end }}

{{- define "anomaly-platform.containerSecurityContext" -}}
{{ toYaml .Values.containerSecurityContext }}
{{- end }}

{{- define "anomaly-platform.configMapName" -}}
{{ include "anomaly-platform.componentName" (dict "ctx" . "component" "config") }}
{{- end }}

{{/* Where the ConfigMap is mounted; the file is <dir>/platform.yaml. */}}
{{- define "anomaly-platform.configDir" -}}/etc/anomaly{{- end }}

{{/*
Volume and mount of the platform configuration. The whole directory is mounted, not a
subPath: the kubelet updates a ConfigMap volume in place (an atomic symlink swap) only when
it is mounted as a directory, and the router's hot reload of feature flags depends on that.
*/}}
{{- define "anomaly-platform.configVolume" -}}
- name: config
  configMap:
    name: {{ include "anomaly-platform.configMapName" . }}
{{- end }}

{{- define "anomaly-platform.configVolumeMount" -}}
- name: config
  mountPath: {{ include "anomaly-platform.configDir" . }}
  readOnly: true
{{- end }}

{{/* ------------------------------------------------------------------ secrets and env */}}

{{- define "anomaly-platform.routingKeySecretName" -}}
{{- if .Values.alerts.pagerduty.existingSecret -}}
{{ .Values.alerts.pagerduty.existingSecret }}
{{- else -}}
{{ include "anomaly-platform.componentName" (dict "ctx" . "component" "pagerduty") }}
{{- end -}}
{{- end }}

{{/*
Environment shared by the platform's containers. Credentials only ever arrive through
secretKeyRef; the PagerDuty key is optional while no key was given, so that a cluster
without PagerDuty starts (and `kubectl create secret` later is enough to add one).
*/}}
{{- define "anomaly-platform.commonEnv" -}}
- name: ANOMALY_CONFIG
  value: {{ include "anomaly-platform.configDir" . }}/platform.yaml
- name: HOME
  value: /tmp
{{- if .Values.kafka.sasl.existingSecret }}
- name: ANOMALY_KAFKA__SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.passwordKey }}
{{- end }}
{{- if and .Values.redis.enabled .Values.redis.existingSecret }}
- name: ANOMALY_FEAST__ONLINE_STORE__CONNECTION_STRING
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.connectionStringKey }}
{{- end }}
{{- end }}

{{- define "anomaly-platform.routingKeyEnv" -}}
- name: ANOMALY_ALERTS__ROUTING_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "anomaly-platform.routingKeySecretName" . }}
      key: {{ .Values.alerts.pagerduty.secretKey }}
      {{- if not (or .Values.alerts.pagerduty.existingSecret .Values.alerts.pagerduty.routingKey) }}
      optional: true
      {{- end }}
{{- end }}

{{/* ------------------------------------------------------------------ wiring */}}

{{- define "anomaly-platform.partitions" -}}
{{- dig "kafka" "topics" "events" "partitions" 32 .Values.config | int -}}
{{- end }}

{{- define "anomaly-platform.kafkaClusterName" -}}
{{- .Values.kafka.strimzi.clusterName | default (include "anomaly-platform.componentName" (dict "ctx" . "component" "kafka")) -}}
{{- end }}

{{- define "anomaly-platform.kafkaBootstrap" -}}
{{- if .Values.kafka.strimzi.enabled -}}
{{ include "anomaly-platform.kafkaClusterName" . }}-kafka-bootstrap.{{ .Release.Namespace }}.svc:9092
{{- else -}}
{{ .Values.kafka.bootstrapServers }}
{{- end -}}
{{- end }}

{{/* Names of the models whose serving is enabled, as a JSON list. */}}
{{- define "anomaly-platform.enabledModels" -}}
{{- $names := list -}}
{{- range $name, $m := .Values.serving.models }}
{{- if $m.enabled }}{{ $names = append $names $name }}{{ end }}
{{- end -}}
{{ toJson $names }}
{{- end }}

{{- define "anomaly-platform.rayServiceName" -}}
{{ include "anomaly-platform.componentName" (dict "ctx" . "component" "ray") }}
{{- end }}

{{/*
V2 endpoint of one model as the router sees it (config serving.endpoints.<model>):
- kserve: the predictor Service KServe creates, `<isvc>-predictor` on port 80 (REST);
- deployment: the chart's Service, REST and gRPC ports, protocol serving.protocol;
- ray: the RayService's serve Service, the model's route prefix (REST).
Args: ctx, model.
*/}}
{{- define "anomaly-platform.endpoint" -}}
{{- $v := .ctx.Values -}}
{{- $ns := .ctx.Release.Namespace -}}
{{- $name := include "anomaly-platform.servingName" . -}}
{{- $ep := dict "timeout_ms" ($v.serving.timeoutMs | int) -}}
{{- if eq $v.serving.mode "kserve" -}}
{{- $host := printf "%s-predictor.%s.svc.cluster.local" $name $ns -}}
{{- $_ := set $ep "rest_url" (printf "http://%s" $host) -}}
{{- $_ := set $ep "protocol" "rest" -}}
{{- else if eq $v.serving.mode "deployment" -}}
{{- $host := printf "%s.%s.svc.cluster.local" $name $ns -}}
{{- $_ := set $ep "rest_url" (printf "http://%s:%d" $host ($v.serving.ports.http | int)) -}}
{{- $_ := set $ep "grpc_target" (printf "%s:%d" $host ($v.serving.ports.grpc | int)) -}}
{{- $_ := set $ep "protocol" $v.serving.protocol -}}
{{- else -}}
{{- $host := printf "%s-serve-svc.%s.svc.cluster.local" (include "anomaly-platform.rayServiceName" .ctx) $ns -}}
{{- $_ := set $ep "rest_url" (printf "http://%s:%d/%s" $host ($v.serving.ray.servePort | int) .model) -}}
{{- $_ := set $ep "protocol" "rest" -}}
{{- end -}}
{{ toJson $ep }}
{{- end }}

{{- define "anomaly-platform.ingestGroup" -}}
{{- dig "ingest" "group_id" "anomaly-ingest" .Values.config -}}
{{- end }}

{{/*
The platform.yaml the ConfigMap holds: what the chart wires (Kafka, Redis, endpoints, the
ingest ops server),
overlaid by .Values.config (the user wins), then models without a server are switched off.
*/}}
{{- define "anomaly-platform.platformConfig" -}}
{{- $v := .Values -}}
{{- $wired := dict "kafka" (dict "bootstrap_servers" (include "anomaly-platform.kafkaBootstrap" .)) -}}
{{- if $v.redis.enabled -}}
{{- $store := dict "type" "redis" "connection_string" (printf "%s:%d,db=%d" $v.redis.host ($v.redis.port | int) ($v.redis.db | int)) -}}
{{- if $v.redis.keyTtlSeconds }}{{ $_ := set $store "key_ttl_seconds" ($v.redis.keyTtlSeconds | int) }}{{ end -}}
{{- $_ := set $wired "feast" (dict "online_store" $store) -}}
{{- end -}}
{{- $endpoints := dict -}}
{{- range $name := (include "anomaly-platform.enabledModels" . | fromJsonArray) -}}
{{- $_ := set $endpoints $name (include "anomaly-platform.endpoint" (dict "ctx" $ "model" $name) | fromJson) -}}
{{- end -}}
{{- $_ := set $wired "serving" (dict "endpoints" $endpoints) -}}
{{- /* Ingest's ops server must listen on the pod address for probes and scrapers. */ -}}
{{- $_ := set $wired "ingest" (dict "ops_host" "0.0.0.0" "ops_port" ($v.ingest.opsPort | int)) -}}
{{- /* The router's doors listen on the pod address, on the ports its Service targets. */ -}}
{{- $_ := set $wired "router" (dict "host" "0.0.0.0" "http_port" ($v.router.ports.http | int) "grpc_port" ($v.router.ports.grpc | int)) -}}
{{- $cfg := mergeOverwrite $wired (deepCopy ($v.config | default dict)) -}}
{{- range $name, $m := $v.serving.models -}}
{{- if not $m.enabled -}}
{{- $flags := $cfg.flags | default dict -}}
{{- $models := $flags.models | default dict -}}
{{- $flag := get $models $name | default dict -}}
{{- $_ := set $flag "enabled" false -}}
{{- $_ := set $models $name $flag -}}
{{- $_ := set $flags "models" $models -}}
{{- $_ := set $cfg "flags" $flags -}}
{{- end -}}
{{- end -}}
{{ toYaml $cfg }}
{{- end }}

{{/*
Checksum of the configuration *without* its feature flags. Pods restart (rolling update)
when something they read once changes; a flag change alone leaves the checksum as it is, so
the router hot-reloads it instead of restarting.
*/}}
{{- define "anomaly-platform.staticConfigChecksum" -}}
{{- $cfg := include "anomaly-platform.platformConfig" . | fromYaml -}}
{{- omit $cfg "flags" | toYaml | sha256sum | trunc 16 -}}
{{- end }}

{{/* ------------------------------------------------------------------ checks */}}

{{/* Cross-field checks that values.schema.json cannot express; called from configmap.yaml. */}}
{{- define "anomaly-platform.validate" -}}
{{- $v := .Values -}}
{{- $partitions := include "anomaly-platform.partitions" . | int -}}
{{- if and $v.ingest.enabled (not $v.ingest.keda.enabled) (gt ($v.ingest.replicas | int) $partitions) -}}
{{- fail (printf "ingest.replicas (%d) exceeds the partition count of the events topic (config.kafka.topics.events.partitions = %d): consumers beyond the partition count sit idle" ($v.ingest.replicas | int) $partitions) -}}
{{- end -}}
{{- if and $v.ingest.enabled $v.ingest.keda.enabled (gt ($v.ingest.keda.maxReplicas | int) $partitions) -}}
{{- fail (printf "ingest.keda.maxReplicas (%d) exceeds the partition count of the events topic (config.kafka.topics.events.partitions = %d)" ($v.ingest.keda.maxReplicas | int) $partitions) -}}
{{- end -}}
{{- if and $v.ingest.keda.enabled (gt ($v.ingest.keda.minReplicas | int) ($v.ingest.keda.maxReplicas | int)) -}}
{{- fail "ingest.keda.minReplicas must not exceed ingest.keda.maxReplicas" -}}
{{- end -}}
{{- if gt ($v.router.autoscaling.minReplicas | int) ($v.router.autoscaling.maxReplicas | int) -}}
{{- fail "router.autoscaling.minReplicas must not exceed router.autoscaling.maxReplicas" -}}
{{- end -}}
{{- range $name, $m := $v.serving.models -}}
{{- if gt ($m.minReplicas | int) ($m.maxReplicas | int) -}}
{{- fail (printf "serving.models.%s.minReplicas must not exceed its maxReplicas" $name) -}}
{{- end -}}
{{- end -}}
{{- $ingestCfg := $v.config.ingest | default dict -}}
{{- if and (hasKey $ingestCfg "ops_port") (ne ($ingestCfg.ops_port | int) ($v.ingest.opsPort | int)) -}}
{{- fail (printf "config.ingest.ops_port (%d) differs from ingest.opsPort (%d): set ingest.opsPort only, the chart wires it into the configuration" ($ingestCfg.ops_port | int) ($v.ingest.opsPort | int)) -}}
{{- end -}}
{{- $alerts := $v.config.alerts | default dict -}}
{{- if hasKey $alerts "routing_key" -}}
{{- fail "config.alerts.routing_key must not be set: the ConfigMap is not a secret. Use alerts.pagerduty.routingKey or alerts.pagerduty.existingSecret (env ANOMALY_ALERTS__ROUTING_KEY)" -}}
{{- end -}}
{{- range $i, $sink := ($alerts.sinks | default list) -}}
{{- if and (kindIs "map" $sink) (hasKey $sink "routing_key") -}}
{{- fail (printf "config.alerts.sinks[%d].routing_key must not be set: use alerts.pagerduty.routingKey or alerts.pagerduty.existingSecret" $i) -}}
{{- end -}}
{{- end -}}
{{- if and (hasKey ($v.config.kafka | default dict) "sasl_password") -}}
{{- fail "config.kafka.sasl_password must not be set: use kafka.sasl.existingSecret (env ANOMALY_KAFKA__SASL_PASSWORD)" -}}
{{- end -}}
{{- end }}

{{/* ------------------------------------------------------------------ serving */}}

{{/* Image of one model server: the CUDA image when it asks for GPUs. Args: ctx, m. */}}
{{- define "anomaly-platform.servingImage" -}}
{{- $img := ternary .ctx.Values.serving.gpuImage .ctx.Values.serving.image (gt (.m.gpu | int) 0) -}}
{{ include "anomaly-platform.image" (dict "ctx" .ctx "image" $img) }}
{{- end }}

{{- define "anomaly-platform.servingPullPolicy" -}}
{{- $img := ternary .ctx.Values.serving.gpuImage .ctx.Values.serving.image (gt (.m.gpu | int) 0) -}}
{{ $img.pullPolicy }}
{{- end }}

{{/* Resources of one model server, with the GPU limit when gpu > 0. Args: ctx, m. */}}
{{- define "anomaly-platform.servingResources" -}}
{{- $res := deepCopy (.m.resources | default .ctx.Values.serving.resources) -}}
{{- if gt (.m.gpu | int) 0 -}}
{{- $limits := $res.limits | default dict -}}
{{- $_ := set $limits .ctx.Values.serving.gpu.resourceName (.m.gpu | int) -}}
{{- $_ := set $res "limits" $limits -}}
{{- end -}}
{{ toYaml $res }}
{{- end }}

{{/* Server arguments, each through tpl with .model set. Args: ctx, model. */}}
{{- define "anomaly-platform.servingArgs" -}}
{{- $scope := dict "model" .model "Template" .ctx.Template -}}
{{- range .ctx.Values.serving.args }}
- {{ tpl . $scope | quote }}
{{- end }}
{{- end }}

{{/* A probe whose httpGet port is forced to a number (KServe/Knative want the container
port itself, whose name must be http1 there). Args: probe, port. */}}
{{- define "anomaly-platform.probeOnPort" -}}
{{- $p := deepCopy .probe -}}
{{- if $p.httpGet }}{{ $_ := set $p.httpGet "port" (.port | int) }}{{ end -}}
{{ toYaml $p }}
{{- end }}

{{/* Scheduling for a model server: GPU constraints when gpu > 0. Args: ctx, m. */}}
{{- define "anomaly-platform.servingScheduling" -}}
{{- $s := .ctx.Values.serving -}}
{{- $nodeSelector := deepCopy ($s.nodeSelector | default dict) -}}
{{- $tolerations := $s.tolerations | default list -}}
{{- if gt (.m.gpu | int) 0 -}}
{{- $nodeSelector = mergeOverwrite $nodeSelector (deepCopy ($s.gpu.nodeSelector | default dict)) -}}
{{- $tolerations = concat $tolerations ($s.gpu.tolerations | default list) -}}
{{- end -}}
{{- with $nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
