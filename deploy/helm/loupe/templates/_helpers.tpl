{{/* Common labels. */}}
{{- define "loupe.labels" -}}
app.kubernetes.io/part-of: loupe
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{/* The store URL both binaries use. */}}
{{- define "loupe.storeURL" -}}
s3://{{ .Values.s3.bucket }}/{{ .Values.s3.prefix }}?endpoint={{ .Values.s3.endpoint }}&secure={{ .Values.s3.secure }}&region={{ .Values.s3.region }}
{{- end }}

{{/* The Secret holding S3 credentials. */}}
{{- define "loupe.s3Secret" -}}
{{- if .Values.s3.existingSecret }}{{ .Values.s3.existingSecret }}{{ else }}{{ .Release.Name }}-s3{{ end }}
{{- end }}

{{/* S3 credentials as environment variables. */}}
{{- define "loupe.s3Env" -}}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef: {name: {{ include "loupe.s3Secret" . }}, key: AWS_ACCESS_KEY_ID}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ include "loupe.s3Secret" . }}, key: AWS_SECRET_ACCESS_KEY}
{{- end }}
