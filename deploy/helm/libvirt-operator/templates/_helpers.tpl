{{/* Chart name, overridable. */}}
{{- define "libvirt-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Object name prefix: "<release>-<chart>", or the release name when it already holds the chart name. */}}
{{- define "libvirt-operator.fullname" -}}
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

{{/* Labels that select the operator pods: never change them in an upgrade (a DaemonSet's selector is immutable). */}}
{{- define "libvirt-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "libvirt-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "libvirt-operator.labels" -}}
{{ include "libvirt-operator.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "libvirt-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "libvirt-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "libvirt-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* A YAML boolean as the operator's --flag/--no-flag pair. */}}
{{- define "libvirt-operator.boolFlag" -}}
{{- if .value -}}--{{ .flag }}{{- else -}}--no-{{ .flag }}{{- end -}}
{{- end -}}

{{/*
Seconds to wait after SIGTERM: the operator waits up to 30 s for in-flight reconciliations (one may be a
graceful guest shutdown of up to shutdownTimeout), then releases its node Lease; 30 s more for that.
*/}}
{{- define "libvirt-operator.terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- add (max 30 (int64 (ceil .Values.operator.shutdownTimeout))) 30 -}}
{{- else -}}
{{- int64 .Values.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/* Render a number as the operator parses it: integral values without exponent or fraction. */}}
{{- define "libvirt-operator.number" -}}
{{- $v := . -}}
{{- if eq (float64 $v) (float64 (int64 $v)) -}}{{ int64 $v }}{{- else -}}{{ $v }}{{- end -}}
{{- end -}}
