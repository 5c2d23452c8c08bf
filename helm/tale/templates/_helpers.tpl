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
{{- printf "http://%s-egress.%s.svc:3128" (include "tale.fullname" .) .Values.egressProxy.namespace -}}
{{- else -}}
{{- default "none" .Values.egressProxy.url -}}
{{- end -}}
{{- end -}}

{{/* Images: a tag pinned to the chart's appVersion unless one is given. */}}
{{- define "tale.spawnerImage" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "tale.egressImage" -}}
{{- printf "%s:%s" .Values.egressProxy.image.repository (default .Chart.AppVersion .Values.egressProxy.image.tag) -}}
{{- end -}}

{{- define "tale.runtimeImage" -}}
{{- default (printf "tale-sandbox-runtime:%s" .Chart.AppVersion) .Values.runtimeImage -}}
{{- end -}}

{{/* The token Secret's key. */}}
{{- define "tale.tokenSecretKey" -}}
{{- if .Values.token.existingSecret }}{{ .Values.token.existingSecretKey }}{{ else }}token{{ end -}}
{{- end -}}

{{/* `key=value,…` of a map, sorted by key (label selectors in env). */}}
{{- define "tale.pairs" -}}
{{- $pairs := list -}}
{{- range $key, $value := . -}}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}

{{/*
Env of one profile's session placement (dict: prefix, runtimeClass = its variable, placement = the
values); an empty or missing key sets nothing. Strings pass through, so "none" clears a setting.
*/}}
{{- define "tale.placementEnv" -}}
{{- $p := .placement -}}
{{- if $p.imagePullSecrets }}
- name: {{ .prefix }}IMAGE_PULL_SECRETS
  value: {{ if kindIs "string" $p.imagePullSecrets }}{{ $p.imagePullSecrets | quote }}{{ else }}{{ join "," $p.imagePullSecrets | quote }}{{ end }}
{{- end }}
{{- if $p.nodeSelector }}
- name: {{ .prefix }}NODE_SELECTOR
  value: {{ if kindIs "string" $p.nodeSelector }}{{ $p.nodeSelector | quote }}{{ else }}{{ include "tale.pairs" $p.nodeSelector | quote }}{{ end }}
{{- end }}
{{- if $p.tolerations }}
- name: {{ .prefix }}TOLERATIONS
  value: {{ if kindIs "string" $p.tolerations }}{{ $p.tolerations | quote }}{{ else }}{{ toJson $p.tolerations | quote }}{{ end }}
{{- end }}
{{- if $p.priorityClassName }}
- name: {{ .prefix }}PRIORITY_CLASS
  value: {{ $p.priorityClassName | quote }}
{{- end }}
{{- if $p.imagePullPolicy }}
- name: {{ .prefix }}IMAGE_PULL_POLICY
  value: {{ $p.imagePullPolicy | quote }}
{{- end }}
{{- if $p.runtimeClass }}
- name: {{ .runtimeClass }}
  value: {{ $p.runtimeClass | quote }}
{{- end }}
{{- end -}}

{{/* Whether the egress proxy runs in a namespace of its own (then the sessions one is restricted). */}}
{{- define "tale.egressOwnNamespace" -}}
{{- if and .Values.egressProxy.enabled (ne .Values.egressProxy.namespace .Values.sessions.namespace) }}true{{ end -}}
{{- end -}}
