{{/* Name prefix of every object of the release. */}}
{{- define "tale.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "tale.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
app.kubernetes.io/part-of: tale
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* The spawner Pods' labels: the session NetworkPolicy admits runnerd traffic from these only. */}}
{{- define "tale.spawnerSelectorLabels" -}}
app.kubernetes.io/name: tale-spawner
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tale.egressSelectorLabels" -}}
app.kubernetes.io/name: tale-egress
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tale.tokenSecretName" -}}
{{- default (printf "%s-token" (include "tale.fullname" .)) .Values.token.existingSecret -}}
{{- end -}}

{{/* HTTP(S)_PROXY of the sessions ("none" for none). */}}
{{- define "tale.egressProxyUrl" -}}
{{- if .Values.egressProxy.enabled -}}
{{- printf "http://%s-egress.%s.svc:3128" (include "tale.fullname" .) .Values.sessions.namespace -}}
{{- else -}}
{{- default "none" .Values.egressProxy.url -}}
{{- end -}}
{{- end -}}
