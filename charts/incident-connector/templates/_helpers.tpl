{{/* Chart name, overridable. */}}
{{- define "incident-connector.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name: the release name, or release-chart. */}}
{{- define "incident-connector.fullname" -}}
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

{{/* Labels that select this release's pods; never change them after install. */}}
{{- define "incident-connector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "incident-connector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "incident-connector.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "incident-connector.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "incident-connector.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The Secret that holds the token, and whether the chart makes it. */}}
{{- define "incident-connector.tokenSecret" -}}
{{- if and .Values.token.existingSecret .Values.token.value }}
{{- fail "set token.existingSecret or token.value, not both" }}
{{- else if .Values.token.existingSecret }}
{{- .Values.token.existingSecret }}
{{- else if .Values.token.value }}
{{- printf "%s-token" (include "incident-connector.fullname" .) }}
{{- else }}
{{- fail "set token.existingSecret (the name of a Secret holding the API token) or token.value" }}
{{- end }}
{{- end }}

{{- define "incident-connector.allowlistConfigMap" -}}
{{- printf "%s-allowlist" (include "incident-connector.fullname" .) }}
{{- end }}

{{/* The allowlist file: one entry per line, no comments, so that the same text
     also works as the space-separated --forward-dest-allowlist value. */}}
{{- define "incident-connector.allowlistText" -}}
{{- if not .Values.allowlist }}
{{- fail "allowlist is empty: list the destinations to allow (or the single entry \"any\")" }}
{{- end }}
{{- join "\n" .Values.allowlist }}
{{ end }}

{{/*
Seconds the kubelet waits after SIGTERM before SIGKILL: the connector's grace
period rounded up, plus 15 s for the forward's cancellation and the exit.
*/}}
{{- define "incident-connector.terminationGracePeriodSeconds" -}}
{{- add (ceil (float64 .Values.gracePeriod) | int) 15 }}
{{- end }}

{{/* HOST:PORT -> PORT (default 443), for the NetworkPolicy. */}}
{{- define "incident-connector.relayPort" -}}
{{- $address := .Values.relayAddress | default "relay.incident.io:443" }}
{{- $parts := regexFind ":[0-9]+$" $address }}
{{- if $parts }}{{ trimPrefix ":" $parts }}{{ else }}22{{ end }}
{{- end }}

{{/* The port of a URL: explicit, else 443 for https and 80 for http. */}}
{{- define "incident-connector.urlPort" -}}
{{- $url := urlParse . }}
{{- $port := regexFind ":[0-9]+$" $url.host }}
{{- if $port }}{{ trimPrefix ":" $port }}{{ else if eq $url.scheme "http" }}80{{ else }}443{{ end }}
{{- end }}
