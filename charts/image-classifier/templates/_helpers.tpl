{{/* Chart name, overridable. */}}
{{- define "ic.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* Namespace of every resource. */}}
{{- define "ic.namespace" -}}
{{- .Values.namespace.name -}}
{{- end -}}

{{/* Kubernetes recommended labels (app.kubernetes.io/*). Call with (dict "ctx" $ "component" "x"). */}}
{{- define "ic.labels" -}}
app.kubernetes.io/name: {{ include "ic.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: image-classifier-platform
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Labels that select this release's model pods. */}}
{{- define "ic.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ic.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* ServingRuntime names. */}}
{{- define "ic.runtimeName" -}}
{{- if eq .runtime "torchserve" -}}{{ include "ic.name" .ctx }}-torchserve{{- else -}}{{ include "ic.name" .ctx }}-kserve-native{{- end -}}
{{- end -}}

{{/* Image of a runtime ("torchserve" | "kserveNative"): the GPU tag when gpu.enabled. */}}
{{- define "ic.image" -}}
{{- $img := index .ctx.Values.images .runtime -}}
{{- printf "%s:%s" $img.repository (ternary $img.gpuTag $img.tag .ctx.Values.gpu.enabled) -}}
{{- end -}}

{{/* Port where a runtime serves Prometheus text, apart from its inference ports on both. */}}
{{- define "ic.metricsPort" -}}
{{- if eq .runtime "torchserve" -}}{{ .ctx.Values.ports.torchserve.metrics }}{{- else -}}{{ .ctx.Values.ports.kserveNative.metrics }}{{- end -}}
{{- end -}}

{{/* Port where Prometheus scrapes a model pod: the runtime's metrics port; in Knative mode
     KServe's aggregation port on queue-proxy (a Knative pod declares one container port, and the
     operator's PodMonitor keeps declared ports only). */}}
{{- define "ic.scrapePort" -}}
{{- if eq .ctx.Values.deploymentMode "Knative" -}}{{ .ctx.Values.ports.knativeAggregatedMetrics }}{{- else -}}{{ include "ic.metricsPort" . }}{{- end -}}
{{- end -}}

{{/* The UID/GID every container runs as: above 10000 so it never maps to a host user (checkov
     CKV_K8S_40); the images in docker/ create this user. */}}
{{- define "ic.uid" -}}10001{{- end -}}

{{/* Pod-level securityContext of every pod of the chart (fsGroup: the model claim is writable by
     the upload pod and readable by the model pods). */}}
{{- define "ic.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ include "ic.uid" . }}
runAsGroup: {{ include "ic.uid" . }}
fsGroup: {{ include "ic.uid" . }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Restricted-profile container securityContext, shared by every container of the chart. */}}
{{- define "ic.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ include "ic.uid" . }}
runAsGroup: {{ include "ic.uid" . }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
{{- if ne .Values.deploymentMode "Knative" }}
{{- /* Knative before 1.17 refuses the field, even false (its default) */}}
privileged: false
{{- end }}
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Values checks that the schema cannot express; each message says what to change. */}}
{{- define "ic.validate" -}}
{{- $v := .Values -}}
{{- $standard := eq $v.deploymentMode "Standard" -}}
{{- if and $standard (has $v.autoscaling.metric (list "concurrency" "rps")) -}}
{{- fail (printf "autoscaling.metric %q needs deploymentMode Knative (KPA); Standard mode (HPA) scales on cpu or memory" $v.autoscaling.metric) -}}
{{- end -}}
{{- if and (not $standard) (has $v.autoscaling.metric (list "cpu" "memory")) -}}
{{- fail (printf "autoscaling.metric %q is an HPA metric; deploymentMode Knative (KPA) scales on concurrency or rps" $v.autoscaling.metric) -}}
{{- end -}}
{{- if and (not $standard) $v.autoscaling.keda.enabled -}}
{{- fail "autoscaling.keda needs deploymentMode Standard (KServe supports KEDA in Standard mode only; Knative's KPA scales on concurrency or rps itself)" -}}
{{- end -}}
{{- if and $v.autoscaling.keda.enabled (not $v.monitoring.prometheusRule.enabled) -}}
{{- fail "autoscaling.keda scales on series the chart's recording rules write: it needs monitoring.prometheusRule.enabled" -}}
{{- end -}}
{{- if and $standard (lt (int $v.autoscaling.minReplicas) 1) -}}
{{- fail "autoscaling.minReplicas 0 (scale to zero) needs deploymentMode Knative; Standard mode keeps at least 1 replica" -}}
{{- end -}}
{{- if gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas) -}}
{{- fail "autoscaling.minReplicas is larger than autoscaling.maxReplicas" -}}
{{- end -}}
{{- if ge (int $v.shutdown.drainSeconds) (int $v.shutdown.terminationGracePeriodSeconds) -}}
{{- fail "shutdown.drainSeconds must be shorter than shutdown.terminationGracePeriodSeconds (the grace period includes the drain; SIGTERM needs time after it)" -}}
{{- end -}}
{{- $names := dict -}}
{{- range $v.models -}}
{{- if hasKey $names .name -}}{{- fail (printf "models: %q is listed twice" .name) -}}{{- end -}}
{{- $_ := set $names .name true -}}
{{- if and $standard (hasKey . "canaryTrafficPercent") -}}
{{- fail (printf "models[%s].canaryTrafficPercent: canary rollouts exist only in deploymentMode Knative (KServe splits traffic between Knative revisions); remove it or set deploymentMode: Knative" .name) -}}
{{- end -}}
{{- if and (eq .runtime "torchserve") (eq .protocol "grpc-v2") -}}
{{- fail (printf "models[%s]: protocol grpc-v2 needs runtime kserve-native (TorchServe 0.12's OIP gRPC service is org.pytorch.serve.grpc.openinference.GRPCInferenceService, which standard OIP clients cannot call)" .name) -}}
{{- end -}}
{{- if and (eq .runtime "torchserve") (not $v.runtimes.torchserve.enabled) -}}
{{- fail (printf "models[%s] uses runtime torchserve but runtimes.torchserve.enabled is false" .name) -}}
{{- end -}}
{{- if and (eq .runtime "kserve-native") (not $v.runtimes.kserveNative.enabled) -}}
{{- fail (printf "models[%s] uses runtime kserve-native but runtimes.kserveNative.enabled is false" .name) -}}
{{- end -}}
{{- if and (hasPrefix "s3://" .storageUri) (ne $v.storage.credentials.type "s3") -}}
{{- fail (printf "models[%s].storageUri %s needs storage.credentials.type s3" .name .storageUri) -}}
{{- end -}}
{{- if and (hasPrefix "gs://" .storageUri) (ne $v.storage.credentials.type "gcs") -}}
{{- fail (printf "models[%s].storageUri %s needs storage.credentials.type gcs" .name .storageUri) -}}
{{- end -}}
{{- end -}}
{{- /* KServe's webhook refuses to change an InferenceService's deployment mode; say so before helm
     upgrade half-applies (lookup finds nothing under helm template or a first install). */ -}}
{{- $modes := dict "Standard" "Standard" "RawDeployment" "Standard" "Knative" "Knative" "Serverless" "Knative" -}}
{{- range $v.models -}}
{{- $old := lookup "serving.kserve.io/v1beta1" "InferenceService" (include "ic.namespace" $) .name -}}
{{- $oldMode := "" -}}
{{- if $old }}{{ $oldMode = index (default (dict) $old.metadata.annotations) "serving.kserve.io/deploymentMode" | default "" }}{{ end -}}
{{- if and $oldMode (ne (get $modes $oldMode) $v.deploymentMode) -}}
{{- fail (printf "models[%s]: the InferenceService runs in deploymentMode %s and KServe cannot switch it to %s in place: helm uninstall (or delete the InferenceService), then install again" .name $oldMode $v.deploymentMode) -}}
{{- end -}}
{{- end -}}
{{- if and $v.monitoring.serviceMonitor.enabled $v.monitoring.podMonitor.enabled -}}
{{- fail "monitoring.podMonitor and monitoring.serviceMonitor both scrape the same pods: enable one" -}}
{{- end -}}
{{- end -}}

{{/* Request limits (values.limits) as each runtime reads them: the KServe-native runtime and
     our handler from SERVE_* (handlers/settings.py RequestLimits), TorchServe's frontend its own
     max_request_size and job_queue_size as TS_* (enable_envvars_config). */}}
{{- define "ic.limitsEnv" -}}
{{- $l := .ctx.Values.limits -}}
{{- if eq .runtime "torchserve" -}}
- name: TS_MAX_REQUEST_SIZE
  value: {{ printf "%d" (int64 $l.maxRequestBytes) | quote }}
- name: TS_JOB_QUEUE_SIZE
  value: {{ printf "%d" (int64 $l.queueSize) | quote }}
- name: SERVE_MAX_IMAGES_PER_REQUEST
  value: {{ printf "%d" (int64 $l.maxImagesPerRequest) | quote }}
{{- if .ctx.Values.auth.enabled }}
# the exporter's authenticating proxy reads whole bodies before TorchServe: bounded like the runtime
- name: SERVE_MAX_INFLIGHT
  value: {{ printf "%d" (int64 $l.maxInflight) | quote }}
- name: SERVE_BODY_TIMEOUT_S
  value: {{ printf "%d" (int64 $l.bodyTimeoutSeconds) | quote }}
- name: SERVE_RETRY_AFTER_S
  value: {{ printf "%d" (int64 $l.retryAfterSeconds) | quote }}
{{- end }}
{{- else -}}
- name: SERVE_MAX_REQUEST_BYTES
  value: {{ printf "%d" (int64 $l.maxRequestBytes) | quote }}
- name: SERVE_MAX_IMAGES_PER_REQUEST
  value: {{ printf "%d" (int64 $l.maxImagesPerRequest) | quote }}
- name: SERVE_QUEUE_SIZE
  value: {{ printf "%d" (int64 $l.queueSize) | quote }}
- name: SERVE_MAX_INFLIGHT
  value: {{ printf "%d" (int64 $l.maxInflight) | quote }}
- name: SERVE_BODY_TIMEOUT_S
  value: {{ printf "%d" (int64 $l.bodyTimeoutSeconds) | quote }}
- name: SERVE_RETRY_AFTER_S
  value: {{ printf "%d" (int64 $l.retryAfterSeconds) | quote }}
{{- end }}
{{- end }}

{{/* The standard OpenTelemetry variables of the kserve-native runtime's traces (tracing.enabled). */}}
{{- define "ic.tracingEnv" -}}
{{- $t := .Values.tracing -}}
{{- if $t.enabled -}}
{{- if not $t.endpoint -}}
{{- fail "tracing.enabled needs tracing.endpoint: the OTLP endpoint of a collector or tracing backend (e.g. http://otel-collector.monitoring:4318)" -}}
{{- end -}}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $t.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $t.protocol | quote }}
- name: OTEL_TRACES_SAMPLER
  value: parentbased_traceidratio
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $t.sampleRatio | toString | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ include "ic.name" . | quote }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "k8s.namespace.name=%s" (include "ic.namespace" .) | quote }}
{{- end -}}
{{- end }}

{{/* Where the runtime reads the accepted bearer tokens (auth.enabled). */}}
{{- define "ic.tokenDir" -}}/var/run/secrets/image-classifier{{- end -}}

{{/* auth.enabled: the token file's variable, its mount and its volume (the Secret's files,
     updated in place by the kubelet when the Secret changes: no subPath). */}}
{{- define "ic.tokenEnv" -}}
{{- if .Values.auth.enabled -}}
- name: SERVE_TOKEN_FILE
  value: {{ include "ic.tokenDir" . }}/tokens
{{- end }}
{{- end -}}
{{- define "ic.tokenMount" -}}
{{- if .Values.auth.enabled -}}
- name: tokens
  mountPath: {{ include "ic.tokenDir" . }}
  readOnly: true
{{- end }}
{{- end -}}
{{- define "ic.tokenVolume" -}}
{{- if .Values.auth.enabled -}}
- name: tokens
  secret:
    secretName: {{ .Values.auth.secretName }}
    items:
      - key: tokens
        path: tokens
{{- end }}
{{- end -}}

{{/* The preStop hook of every model container: wait while the Service stops routing to the pod
     and the requests in flight finish (both runtimes' images have sleep). */}}
{{- define "ic.preStop" -}}
lifecycle:
  preStop:
    exec:
      command: ["sleep", "{{ .Values.shutdown.drainSeconds }}"]
{{- end -}}

{{/* The host KServe gives a model outside the cluster. Standard mode: KServe's ingress domain
     template (reconcilers/ingress/domain.go: text/template over Name, Namespace, IngressDomain,
     Annotations, Labels of the InferenceService). Knative mode: Knative's <name>.<namespace>.<domain>,
     which KServe takes from the predictor's Knative route. Call with (dict "ctx" $ "model" .). */}}
{{- define "ic.modelHost" -}}
{{- $v := .ctx.Values -}}
{{- $ns := include "ic.namespace" .ctx -}}
{{- if eq $v.deploymentMode "Knative" -}}
{{- printf "%s.%s.%s" .model.name $ns $v.ingress.domain -}}
{{- else -}}
{{- $values := dict "Name" .model.name "Namespace" $ns "IngressDomain" $v.ingress.domain "Annotations" (dict) "Labels" (dict) "Template" .ctx.Template -}}
{{- tpl $v.ingress.domainTemplate $values -}}
{{- end -}}
{{- end -}}

{{/* "true" when a model is in object storage (s3://, gs://): KServe injects its storage initializer. */}}
{{- define "ic.objectStorage" -}}
{{- range .Values.models }}{{ if or (hasPrefix "s3://" .storageUri) (hasPrefix "gs://" .storageUri) }}true{{ end }}{{ end -}}
{{- end -}}

{{/* The release's ClusterStorageContainer (cluster-scoped: the namespace keeps names unique). */}}
{{- define "ic.storageContainerName" -}}
{{- printf "%s-%s" (include "ic.name" .) (include "ic.namespace" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The model containers' entry: wait until the storage layout is in /mnt/models, then exec the
     runtime. A pvc:// claim is mounted, not copied, so a pod may start before the upload; waiting
     (until the startup probe gives up) beats a crash loop. No "{{" in here: KServe runs Go
     text/template over the container, and no "$(": the kubelet expands it.
     Call with (dict "files" (list ...)): the paths under /mnt/models that must exist. */}}
{{- define "ic.waitForModel" -}}
- sh
- -c
- |
  trap 'exit 143' TERM
  until {{ range $i, $f := .files }}{{ if $i }} && {{ end }}ls /mnt/models/{{ $f }} >/dev/null 2>&1{{ end }}; do
    [ -n "$told" ] || echo "waiting for the model layout in /mnt/models ({{ join ", " .files }}): copy it into the model storage"
    told=1
    sleep 2
  done
  exec "$@"
- wait-for-model
{{- end -}}
