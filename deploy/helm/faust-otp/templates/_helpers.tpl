{{/*
Names and labels, as `helm create` names them.
*/}}
{{- define "faust-otp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's base name: StatefulSet, Services, Secret and PDB are called by it (the headless
Service adds "-headless"). 52 characters at most: the StatefulSet controller puts the pod name
in a label (controller-revision-hash adds 11 characters to the StatefulSet's name, and labels
stop at 63).
*/}}
{{- define "faust-otp.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "faust-otp.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "faust-otp.labels" -}}
helm.sh/chart: {{ include "faust-otp.chart" . }}
{{ include "faust-otp.selectorLabels" . }}
app.kubernetes.io/version: {{ include "faust-otp.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
What the PodDisruptionBudget and the Services select the workers' pods by.
*/}}
{{- define "faust-otp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "faust-otp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "faust-otp.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{- define "faust-otp.secretName" -}}
{{- default (include "faust-otp.fullname" .) .Values.existingSecret }}
{{- end }}

{{/*
Every variable of every secret setting of app/settings.py, aliases included: none may be set
in plain `env` (the test renders each one there and expects this chart to refuse it).
*/}}
{{- define "faust-otp.secretVariables" -}}
OTP_HMAC_SECRET NOTIFY_API_TOKEN
SMTP_PASSWORD SIMPLEJAVAMAIL_SMTP_PASSWORD
APPLICATION_FILE_STORAGE_S3_ACCESS_KEY S3_ACCESS_KEY
APPLICATION_FILE_STORAGE_S3_SECRET_KEY S3_SECRET_KEY
TWILIO_AUTH_TOKEN
SMS_WEBHOOK_URL SMS_WEBHOOK_HEADERS
PUSH_WEBHOOK_URL PUSH_WEBHOOK_HEADERS
{{- end }}

{{/*
Variables the chart sets itself, from the value named.
*/}}
{{- define "faust-otp.chartVariables" -}}
{{- dict "DATA_DIR" "persistence.mountPath" "WEB_HOST" "(always 0.0.0.0)" "WEB_PORT" "webPort" "TABLE_STANDBY_REPLICAS" "tableStandbyReplicas" | toJson }}
{{- end }}

{{/*
An `env` value as the text of an environment variable. Helm reads numbers of a values file as
float64, which would print 10485760 as "1.048576e+07": whole numbers are printed as integers.
*/}}
{{- define "faust-otp.envValue" -}}
{{- if and (kindIs "float64" .) (eq (. | int64 | float64) .) }}
{{- . | int64 | toString }}
{{- else }}
{{- . | toString }}
{{- end }}
{{- end }}

{{/*
SHUTDOWN_TIMEOUT_SECONDS as the worker reads it (its default is 30), rounded up.
*/}}
{{- define "faust-otp.shutdownSeconds" -}}
{{- $raw := index .Values.env "SHUTDOWN_TIMEOUT_SECONDS" | default "30" | toString }}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]+)?$" $raw) }}
{{- fail (printf "env.SHUTDOWN_TIMEOUT_SECONDS must be a number of seconds, got %q" $raw) }}
{{- end }}
{{- $raw | float64 | ceil | int64 }}
{{- end }}

{{/*
The render-time checks: a value that would start workers wrongly stops `helm template` and
`helm install` with one line naming it.
*/}}
{{- define "faust-otp.validate" -}}
{{- $secretVars := regexSplit "\\s+" (include "faust-otp.secretVariables" . | trim) -1 }}
{{- $chartVars := include "faust-otp.chartVariables" . | fromJson }}
{{- range $name, $_ := .Values.env }}
{{- if has $name $secretVars }}
{{- fail (printf "env.%s is a secret: set it under secrets (or in existingSecret), not in env" $name) }}
{{- end }}
{{- if hasKey $chartVars $name }}
{{- fail (printf "env.%s is set by the chart from %s; remove it from env" $name (get $chartVars $name)) }}
{{- end }}
{{- end }}
{{- range $name, $_ := .Values.secrets }}
{{- if not (has $name $secretVars) }}
{{- fail (printf "secrets.%s is not a secret setting of the service; plain settings go under env" $name) }}
{{- end }}
{{- end }}
{{- $standby := int .Values.tableStandbyReplicas }}
{{- if and (gt $standby 0) (ge $standby (int .Values.replicaCount)) }}
{{- fail (printf "tableStandbyReplicas (%d) must be below replicaCount (%d): a standby lives on another worker" $standby (int .Values.replicaCount)) }}
{{- end }}
{{- end }}
