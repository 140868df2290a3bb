{{/* Names ---------------------------------------------------------------------------------- */}}
{{- define "herwa.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "herwa.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "<fullname>-<component>", kept within 63 characters (the StatefulSet's pods add "-N"). */}}
{{- define "herwa.componentName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "herwa.fullname" $root | trunc 40 | trimSuffix "-") (index . 1) -}}
{{- end -}}

{{- define "herwa.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels ---------------------------------------------------------------------------------- */}}
{{- define "herwa.selectorLabels" -}}
app.kubernetes.io/name: {{ include "herwa.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "herwa.labels" -}}
helm.sh/chart: {{ include "herwa.chart" . }}
{{ include "herwa.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: herwa
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* (list $ "bot") → selector labels of one component */}}
{{- define "herwa.componentSelectorLabels" -}}
{{ include "herwa.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "herwa.componentLabels" -}}
{{ include "herwa.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Objects ---------------------------------------------------------------------------------- */}}
{{- define "herwa.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "herwa.secretName" -}}
{{- default (include "herwa.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "herwa.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "herwa.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The operator's ServiceAccount (operator-rbac.yaml): "<release>-operator". */}}
{{- define "herwa.operator.serviceAccountName" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Names of cluster-scoped objects: "<namespace>-<release>-operator", so the same release
     name in another namespace is another object; over 63 characters, a hash keeps it unique. */}}
{{- define "herwa.operator.clusterScopedName" -}}
{{- $name := printf "%s-%s-operator" .Release.Namespace .Release.Name -}}
{{- if gt (len $name) 63 -}}
{{- printf "%s-%s" ($name | trunc 54 | trimSuffix "-") ($name | sha256sum | trunc 8) -}}
{{- else -}}
{{- $name -}}
{{- end -}}
{{- end -}}

{{/* The kopf peering object (operator-peering.yaml): cluster-scoped unless watchNamespace. */}}
{{- define "herwa.operator.peeringName" -}}
{{- include "herwa.operator.clusterScopedName" . -}}
{{- end -}}

{{- define "herwa.platformConfigMapName" -}}
{{- include "herwa.componentName" (list . "platform") -}}
{{- end -}}

{{/* API versions chosen from the cluster's version (helm template: --kube-version). */}}
{{- define "herwa.cronJobApiVersion" -}}
{{- if semverCompare ">=1.21-0" .Capabilities.KubeVersion.Version -}}batch/v1{{- else -}}batch/v1beta1{{- end -}}
{{- end -}}

{{- define "herwa.pdbApiVersion" -}}
{{- if semverCompare ">=1.21-0" .Capabilities.KubeVersion.Version -}}policy/v1{{- else -}}policy/v1beta1{{- end -}}
{{- end -}}

{{/* Pod fragments ------------------------------------------------------------------------------ */}}
{{- define "herwa.podSecurityContext" -}}
{{ toYaml .Values.podSecurityContext }}
{{- end -}}

{{- define "herwa.containerSecurityContext" -}}
{{ toYaml .Values.securityContext }}
{{- end -}}

{{/* (list $ "KEYNAME" "HERWA_VAR" optional) → one env entry from the Secret */}}
{{- define "herwa.secretEnv" -}}
{{- $root := index . 0 -}}
- name: {{ index . 2 }}
  valueFrom:
    secretKeyRef:
      name: {{ include "herwa.secretName" $root }}
      key: {{ index $root.Values.secrets.keys (index . 1) }}
      {{- if index . 3 }}
      optional: true
      {{- end }}
{{- end -}}

{{/* The environment every role shares. */}}
{{- define "herwa.commonEnv" -}}
- name: HERWA_TELEMETRY_PORT
  value: {{ .Values.telemetry.port | quote }}
- name: HERWA_TELEMETRY_LOG_LEVEL
  value: {{ .Values.telemetry.logLevel | quote }}
- name: HERWA_TELEMETRY_LOG_FORMAT
  value: {{ .Values.telemetry.logFormat | quote }}
- name: HERWA_GUILD_TIMEZONE
  value: {{ .Values.guildDefaults.timezone | quote }}
- name: K8S_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- if .Values.tracing.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.tracing.otlpEndpoint | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ .Values.tracing.sampler | quote }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ .Values.tracing.samplerArg | quote }}
{{- else }}
- name: OTEL_SDK_DISABLED
  value: "true"
{{- end }}
{{- if .Values.tracing.resourceAttributes }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ .Values.tracing.resourceAttributes | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* (list $ "component") → the tmp volume mount every read-only container needs. */}}
{{- define "herwa.tmpVolumeMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "herwa.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- end -}}

{{- define "herwa.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Cross-value checks the JSON schema cannot express; fail with a clear message. */}}
{{- define "herwa.validate" -}}
{{- if and .Values.bot.terminationGracePeriodSeconds (le (int .Values.bot.terminationGracePeriodSeconds) (int (ceil .Values.bot.shutdownGraceSeconds))) -}}
{{- fail (printf "bot.terminationGracePeriodSeconds (%v) must be larger than bot.shutdownGraceSeconds (%v): the bot needs that long to flush on SIGTERM" .Values.bot.terminationGracePeriodSeconds .Values.bot.shutdownGraceSeconds) -}}
{{- end -}}
{{- if ge (float64 .Values.etl.deadlineSeconds) (float64 .Values.etl.activeDeadlineSeconds) -}}
{{- fail (printf "etl.deadlineSeconds (%v) must be smaller than etl.activeDeadlineSeconds (%v): the ETL must stop claiming batches before Kubernetes kills it" .Values.etl.deadlineSeconds .Values.etl.activeDeadlineSeconds) -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled .Values.metrics.podMonitor.enabled -}}
{{- fail "metrics.serviceMonitor.enabled and metrics.podMonitor.enabled are both true: pick one, or every pod is scraped twice" -}}
{{- end -}}
{{- if and .Values.bot.shardCount (lt (int .Values.bot.shardCount) (int .Values.bot.replicas)) -}}
{{- fail (printf "bot.shardCount (%v) is smaller than bot.replicas (%v): some bot pods would own no shard" .Values.bot.shardCount .Values.bot.replicas) -}}
{{- end -}}
{{- $missing := include "herwa.missingSecrets" . -}}
{{- if and $missing (not .Values.secrets.skipRenderCheck) -}}
{{- fail (printf "%s not set and no secrets.existingSecret given: set them (--set-string %s=…), or point secrets.existingSecret at a Secret you manage holding the keys %s, or set secrets.skipRenderCheck=true if your GitOps pipeline delivers them another way" $missing (splitList ", " $missing | first) (values .Values.secrets.keys | sortAlpha | join ", ")) -}}
{{- end -}}
{{- end -}}

{{- define "herwa.botTerminationGrace" -}}
{{- if .Values.bot.terminationGracePeriodSeconds -}}
{{- .Values.bot.terminationGracePeriodSeconds -}}
{{- else -}}
{{- add (int (ceil .Values.bot.shutdownGraceSeconds)) 15 -}}
{{- end -}}
{{- end -}}

{{/* Connection settings neither given as values nor delegated to an existing Secret. */}}
{{- define "herwa.missingSecrets" -}}
{{- if not .Values.secrets.existingSecret -}}
{{- $missing := list -}}
{{- range $key := list "postgresDsn" "redisUrl" "clickhouseUrl" -}}
{{- if not (index $.Values.secrets $key) }}{{ $missing = append $missing (printf "secrets.%s" $key) }}{{ end -}}
{{- end -}}
{{- if and $.Values.bot.enabled (not $.Values.secrets.discordToken) }}{{ $missing = append $missing "secrets.discordToken" }}{{ end -}}
{{- join ", " $missing -}}
{{- end -}}
{{- end -}}

{{/* The long-running roles' first step: wait until the migrate Job (or whoever runs `herwa
     migrate`) has brought the schema to the version this image expects. Reads only. The ETL
     checks inside its recorded run instead, so that a run on an old schema is a failed run. */}}
{{- define "herwa.schemaWait" -}}
- name: wait-for-schema
  image: {{ include "herwa.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["migrate", "--wait", "--timeout", {{ .Values.migrations.waitTimeoutSeconds | quote }}]
  env:
    {{- include "herwa.secretEnv" (list . "postgresDsn" "HERWA_POSTGRES_DSN" false) | nindent 4 }}
    {{- include "herwa.secretEnv" (list . "clickhouseUrl" "HERWA_CLICKHOUSE_URL" false) | nindent 4 }}
    - name: OTEL_SERVICE_NAME
      value: herwa-migrate
    {{- include "herwa.commonEnv" . | nindent 4 }}
  resources:
    {{- toYaml .Values.migrations.resources | nindent 4 }}
  securityContext:
    {{- include "herwa.containerSecurityContext" . | nindent 4 }}
  volumeMounts:
    {{- include "herwa.tmpVolumeMount" . | nindent 4 }}
{{- end -}}
