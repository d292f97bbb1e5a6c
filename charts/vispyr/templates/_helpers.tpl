{{- define "vispyr.labels" -}}
app.kubernetes.io/name: vispyr
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vispyr
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "vispyr.operator.selector" -}}
app.kubernetes.io/name: vispyr
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "vispyr.operator.name" -}}vispyr-operator{{- end }}

{{/* Labels of a component's objects: (list $ "gateway"). */}}
{{- define "vispyr.componentLabels" -}}
{{ include "vispyr.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Selector of a component's pods: (list $ "gateway"). */}}
{{- define "vispyr.selector" -}}
app.kubernetes.io/name: vispyr
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* "repository:tag" of a Vispyr image, the tag defaulting to appVersion: (list $ .Values.gateway.image). */}}
{{- define "vispyr.image" -}}
{{- $image := index . 1 -}}
{{- printf "%s:%s" $image.repository ($image.tag | default (index . 0).Chart.AppVersion) -}}
{{- end }}

{{/* A backend's in-cluster base URL: (list $ "prometheus" 9090). */}}
{{- define "vispyr.backendUrl" -}}
{{- printf "http://vispyr-%s.%s.svc:%v" (index . 1) (index . 0).Release.Namespace (index . 2) -}}
{{- end }}

{{/*
Where the gateway sends each signal and where Grafana queries it: the chart's
backend when enabled, else the external endpoint (required then).
*/}}
{{- define "vispyr.tracesOtlpEndpoint" -}}
{{- if .Values.tempo.enabled -}}{{ include "vispyr.backendUrl" (list . "tempo" 4317) }}
{{- else -}}{{ required "tempo.enabled is false: set tempo.external.otlpGrpcEndpoint" .Values.tempo.external.otlpGrpcEndpoint }}
{{- end }}
{{- end }}

{{- define "vispyr.tempoQueryUrl" -}}
{{- if .Values.tempo.enabled -}}{{ include "vispyr.backendUrl" (list . "tempo" 3200) }}
{{- else -}}{{ required "tempo.enabled is false: set tempo.external.queryUrl" .Values.tempo.external.queryUrl }}
{{- end }}
{{- end }}

{{- define "vispyr.remoteWriteUrl" -}}
{{- if .Values.prometheus.enabled -}}{{ include "vispyr.backendUrl" (list . "prometheus" 9090) }}/api/v1/write
{{- else -}}{{ required "prometheus.enabled is false: set prometheus.external.remoteWriteUrl" .Values.prometheus.external.remoteWriteUrl }}
{{- end }}
{{- end }}

{{- define "vispyr.prometheusQueryUrl" -}}
{{- if .Values.prometheus.enabled -}}{{ include "vispyr.backendUrl" (list . "prometheus" 9090) }}
{{- else -}}{{ required "prometheus.enabled is false: set prometheus.external.queryUrl" .Values.prometheus.external.queryUrl }}
{{- end }}
{{- end }}

{{- define "vispyr.pyroscopeUrl" -}}
{{- if .Values.pyroscope.enabled -}}{{ include "vispyr.backendUrl" (list . "pyroscope" 4040) }}
{{- else -}}{{ required "pyroscope.enabled is false: set pyroscope.external.url" .Values.pyroscope.external.url }}
{{- end }}
{{- end }}

{{- define "vispyr.gatewayOtlpGrpc" -}}http://vispyr-gateway.{{ .Release.Namespace }}.svc:4317{{- end }}
{{- define "vispyr.gatewayOtlpHttp" -}}http://vispyr-gateway.{{ .Release.Namespace }}.svc:4318{{- end }}

{{/* Container security context of every non-root Vispyr and backend container. */}}
{{- define "vispyr.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: {drop: [ALL]}
{{- end }}

{{/* Pod security context running as uid/gid (index . 0), volumes owned by that group. */}}
{{- define "vispyr.nonRootPod" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
fsGroup: {{ . }}
seccompProfile: {type: RuntimeDefault}
{{- end }}

{{/*
A backend's data volume: a PersistentVolumeClaim template entry is not used
(Deployments, one replica), so this is either a PVC reference or an emptyDir.
(list $ "tempo" .Values.tempo.persistence)
*/}}
{{- define "vispyr.dataVolume" -}}
{{- $p := index . 2 -}}
- name: data
{{- if $p.enabled }}
  persistentVolumeClaim: {claimName: vispyr-{{ index . 1 }}}
{{- else }}
  emptyDir: {}
{{- end }}
{{- end }}

{{- define "vispyr.pvc" -}}
{{- $ := index . 0 -}}{{- $name := index . 1 -}}{{- $p := index . 2 -}}
{{- if $p.enabled }}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: vispyr-{{ $name }}
  namespace: {{ $.Release.Namespace }}
  labels: {{- include "vispyr.componentLabels" (list $ $name) | nindent 4 }}
spec:
  accessModes: [ReadWriteOnce]
  {{- with $p.storageClassName }}
  storageClassName: {{ . }}
  {{- end }}
  resources:
    requests: {storage: {{ $p.size }}}
{{- end }}
{{- end }}
