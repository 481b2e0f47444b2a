{{/* vim: set filetype=mustache: */}}

{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "torchyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Fully qualified app name: "<release>-<chart>" unless the release name already contains the
chart name. Truncated to 63 characters (some names are suffixed, see "torchyard.roleName").
*/}}
{{- define "torchyard.fullname" -}}
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

{{- define "torchyard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that never change for the life of a release: Deployment/Service selectors. */}}
{{- define "torchyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "torchyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Labels on every object of the chart. */}}
{{- define "torchyard.labels" -}}
helm.sh/chart: {{ include "torchyard.chart" . }}
{{ include "torchyard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: torchyard
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Name of the operator's ServiceAccount. */}}
{{- define "torchyard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "torchyard.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Name of a (Cluster)Role or binding: "<fullname>-<suffix>", within 63 characters. */}}
{{- define "torchyard.roleName" -}}
{{- $suffix := index . 1 -}}
{{- printf "%s-%s" (include "torchyard.fullname" (index . 0) | trunc (int (sub 62 (len $suffix))) | trimSuffix "-") $suffix -}}
{{- end -}}

{{/* The operator image reference: digest wins over tag; tag defaults to appVersion. */}}
{{- define "torchyard.image" -}}
{{- $repo := .Values.image.repository -}}
{{- if .Values.image.registry -}}
{{- $repo = printf "%s/%s" .Values.image.registry .Values.image.repository -}}
{{- end -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* Namespace of the optional monitoring objects (ServiceMonitor, PodMonitor, rules, dashboards). */}}
{{- define "torchyard.monitoringNamespace" -}}
{{- $ctx := index . 0 -}}
{{- $ns := index . 1 -}}
{{- default $ctx.Release.Namespace $ns -}}
{{- end -}}

{{/* True (non-empty) when the operator watches every namespace. */}}
{{- define "torchyard.clusterWide" -}}
{{- if not .Values.operator.watchNamespaces -}}true{{- end -}}
{{- end -}}

{{/* The TLS Secret of the live-progress endpoint: the user's, or the generated one. */}}
{{- define "torchyard.progressTLSSecret" -}}
{{- .Values.progress.tlsSecretName | default (include "torchyard.roleName" (list . "progress-tls")) -}}
{{- end -}}

{{/* The operator's TORCHYARD_PROGRESS_* environment (controller/progress_server.py). */}}
{{- define "torchyard.progressEnv" -}}
- name: TORCHYARD_PROGRESS_PORT
  value: {{ .Values.progress.port | quote }}
- name: TORCHYARD_PROGRESS_ADVERTISE_URL
  value: {{ printf "https://%s.%s.svc:%v" (include "torchyard.roleName" (list . "progress")) .Release.Namespace .Values.progress.port | quote }}
- name: TORCHYARD_PROGRESS_TLS_CERT
  value: /etc/torchyard/progress-tls/tls.crt
- name: TORCHYARD_PROGRESS_TLS_KEY
  value: /etc/torchyard/progress-tls/tls.key
- name: TORCHYARD_PROGRESS_TLS_CA
  value: /etc/torchyard/progress-tls/ca.crt
- name: TORCHYARD_PROGRESS_WRITE_SECONDS
  value: {{ .Values.progress.writeIntervalSeconds | quote }}
{{- end -}}
