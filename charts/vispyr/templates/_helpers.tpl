{{- define "vispyr.labels" -}}
app.kubernetes.io/name: vispyr
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "vispyr.operator.selector" -}}
app.kubernetes.io/name: vispyr
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "vispyr.operator.name" -}}vispyr-operator{{- end }}
