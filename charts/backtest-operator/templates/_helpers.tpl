{{/* Name of the chart, overridable. */}}
{{- define "backtest-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name when it already contains the chart name, else release-chart. */}}
{{- define "backtest-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "backtest-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object of the chart. */}}
{{- define "backtest-operator.labels" -}}
helm.sh/chart: {{ include "backtest-operator.chart" . }}
{{ include "backtest-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels selecting the operator's pod (immutable once installed). */}}
{{- define "backtest-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "backtest-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "backtest-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "backtest-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag or repository@digest of the operator image. */}}
{{- define "backtest-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "backtest-operator.routerImage" -}}
{{- printf "%s:%s" .Values.operator.routerImage.repository (default .Chart.AppVersion .Values.operator.routerImage.tag) }}
{{- end }}

{{/* The `up` selector of the operator's scrape job, for the OperatorDown alert. */}}
{{- define "backtest-operator.scrapeJob" -}}
{{- if .Values.monitoring.podMonitor.enabled -}}
job="{{ .Release.Namespace }}/{{ include "backtest-operator.fullname" . }}"
{{- else -}}
job="{{ include "backtest-operator.fullname" . }}-metrics",namespace="{{ .Release.Namespace }}"
{{- end }}
{{- end }}
