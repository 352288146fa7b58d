{{/*
Names, labels and the pieces every meshserve pod shares.

Fixed names (what modelmesh-serving users and meshserve's operator expect, not derived from the
release): the `modelmesh-serving` Service, the `model-serving-config` ConfigMap, the
`model-serving-etcd` Secret, and the router pods' labels app.kubernetes.io/name=meshserve,
app.kubernetes.io/component=router (mesh/operator/runtime_pool.py ROUTER_POD_LABELS), which the
Service selects.
*/}}

{{- define "meshserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "meshserve.fullname" -}}
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

{{/* <fullname>-<component>, at most 63 characters. Call with (list $ "component"). */}}
{{- define "meshserve.componentName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "meshserve.fullname" $root | trunc (int (sub 62 (len (index . 1))))) (index . 1) | trimSuffix "-" -}}
{{- end -}}

{{- define "meshserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of a component's pods that its selector matches. Call with (list $ "component"). */}}
{{- define "meshserve.selectorLabels" -}}
app.kubernetes.io/name: meshserve
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Every object's labels. Call with (list $ "component"). */}}
{{- define "meshserve.labels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ include "meshserve.chart" $root }}
{{ include "meshserve.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: meshserve
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
{{- end -}}

{{/* The meshserve image, repository:tag or repository@digest. */}}
{{- define "meshserve.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The default runtime's image: the meshserve image, or its GPU variant (same repository). */}}
{{- define "meshserve.runtimeImage" -}}
{{- $gpu := .Values.defaultRuntime.gpu -}}
{{- if $gpu.enabled -}}
{{- printf "%s:%s" .Values.image.repository (default (printf "%s-gpu" (default .Chart.AppVersion .Values.image.tag)) $gpu.imageTag) -}}
{{- else -}}
{{- include "meshserve.image" . -}}
{{- end -}}
{{- end -}}

{{/* The fabric of this namespace: the release's namespace in cluster scope (as the operator names it). */}}
{{- define "meshserve.fabric" -}}
{{- if .Values.operator.clusterScope -}}
{{- .Release.Namespace -}}
{{- else -}}
{{- .Values.fabric -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding etcd_connection: the user's (external etcd) or the chart's. */}}
{{- define "meshserve.etcdSecret" -}}
{{- if .Values.etcd.external.enabled -}}
{{- .Values.etcd.external.secretName -}}
{{- else -}}
model-serving-etcd
{{- end -}}
{{- end -}}

{{- define "meshserve.etcdName" -}}
{{- include "meshserve.componentName" (list . "etcd") -}}
{{- end -}}

{{- define "meshserve.etcdHeadless" -}}
{{- include "meshserve.componentName" (list . "etcd-headless") -}}
{{- end -}}

{{/* The chart's etcd members' client URLs, comma-separated (the etcd_connection endpoints). */}}
{{- define "meshserve.etcdEndpoints" -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $urls = append $urls (printf "http://%s-%d.%s.%s.svc.%s:2379" (include "meshserve.etcdName" $) $i (include "meshserve.etcdHeadless" $) $.Release.Namespace $.Values.clusterDomain) -}}
{{- end -}}
{{- join "," $urls -}}
{{- end -}}

{{/* The etcd_connection JSON of the chart's etcd (modelmesh-serving's format). */}}
{{- define "meshserve.etcdConnection" -}}
{{- dict "endpoints" (include "meshserve.etcdEndpoints" .) "root_prefix" .Values.etcd.rootPrefix | toJson -}}
{{- end -}}

{{/* Where the etcd Secret is mounted (runtime_pool.ETCD_MOUNT) and the file the processes read. */}}
{{- define "meshserve.etcdMount" -}}/etc/meshserve/etcd{{- end -}}
{{- define "meshserve.etcdConnectionFile" -}}/etc/meshserve/etcd/etcd_connection{{- end -}}

{{/* The flags that join a process to the fabric, as YAML list items. */}}
{{- define "meshserve.fabricArgs" -}}
- --fabric
- {{ include "meshserve.fabric" . | quote }}
- --etcd-connection-file
- {{ include "meshserve.etcdConnectionFile" . }}
{{- with .Values.fabricTimings }}
{{- if not (kindIs "invalid" .leaseTtlSeconds) }}
- --lease-ttl-s
- {{ .leaseTtlSeconds | quote }}
{{- end }}
{{- if not (kindIs "invalid" .loadingTimeoutMs) }}
- --loading-timeout-ms
- {{ .loadingTimeoutMs | int64 | quote }}
{{- end }}
{{- if not (kindIs "invalid" .failureExpiryMs) }}
- --failure-expiry-ms
- {{ .failureExpiryMs | int64 | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Where tls.secretName is mounted (runtime_pool.TLS_MOUNT). */}}
{{- define "meshserve.tlsMount" -}}/etc/meshserve/tls{{- end -}}

{{/*
A process's TLS flags from the mounted tls.secretName, as YAML list items (nothing without one).
Call with (dict "root" $ "clientAuth" "require"): internal links are mutual TLS; the router passes
tls.clientAuth; "" leaves the listeners' client certificates alone (the operator has none).
*/}}
{{- define "meshserve.tlsArgs" -}}
{{- if .root.Values.tls.secretName }}
{{- $m := include "meshserve.tlsMount" .root }}
- --tls-cert-file
- {{ $m }}/tls.crt
- --tls-key-file
- {{ $m }}/tls.key
- --tls-ca-file
- {{ $m }}/ca.crt
- --tls-server-name
- modelmesh-serving
{{- if .clientAuth }}
- --tls-client-auth
- {{ .clientAuth }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The environment every meshserve container gets. */}}
{{- define "meshserve.env" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: HOME
  value: /tmp
{{- end -}}

{{/* Volume mounts of a meshserve container: the etcd Secret and a writable /tmp. */}}
{{- define "meshserve.volumeMounts" -}}
- name: etcd-config
  mountPath: {{ include "meshserve.etcdMount" . }}
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .Values.tls.secretName }}
- name: tls
  mountPath: {{ include "meshserve.tlsMount" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "meshserve.volumes" -}}
- name: etcd-config
  secret:
    secretName: {{ include "meshserve.etcdSecret" . }}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- if .Values.tls.secretName }}
- name: tls
  secret:
    secretName: {{ .Values.tls.secretName }}
{{- end }}
{{- end -}}

{{/*
Readiness and liveness of a meshserve gRPC server. Call with (dict "root" $ "port" 8033 "portName" "grpc").
grpc.health.v1 (probes.grpcHealth, the default), else TCP on the gRPC port for an image without it.
*/}}
{{- define "meshserve.grpcProbes" -}}
{{- $check := "" -}}
{{- if and .root.Values.probes.grpcHealth (not .root.Values.tls.secretName) -}}
{{- $check = printf "grpc:\n    port: %d" (int .port) -}}
{{- else -}}
{{- $check = printf "tcpSocket:\n    port: %s" .portName -}}
{{- end -}}
readinessProbe:
  {{ $check }}
  initialDelaySeconds: 5
  periodSeconds: 5
  timeoutSeconds: 2
  failureThreshold: 3
livenessProbe:
  {{ $check }}
  initialDelaySeconds: 30
  periodSeconds: 15
  timeoutSeconds: 5
  failureThreshold: 4
{{- end -}}

{{/*
What every pod spec of the chart shares: pull secrets, security context, placement and spread.
Call with (dict "root" $ "values" .Values.<component> "component" "<component>").
*/}}
{{- define "meshserve.podPlacement" -}}
{{- $root := .root -}}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity | default .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml .values.topologySpreadConstraints | nindent 2 }}
{{- else if $root.Values.topologySpread.enabled }}
topologySpreadConstraints:
{{- range $root.Values.topologySpread.topologyKeys }}
  - topologyKey: {{ . }}
    maxSkew: {{ $root.Values.topologySpread.maxSkew }}
    whenUnsatisfiable: {{ $root.Values.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "meshserve.selectorLabels" (list $root $.component) | nindent 8 }}
{{- end }}
{{- end }}
{{- end -}}

{{/* A PodDisruptionBudget. Call with (dict "root" $ "values" .Values.<component> "component" "<component>" "name" <name>). */}}
{{- define "meshserve.pdb" -}}
{{- if .values.podDisruptionBudget.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ .name }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "meshserve.labels" (list .root .component) | nindent 4 }}
spec:
  maxUnavailable: {{ .values.podDisruptionBudget.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "meshserve.selectorLabels" (list .root .component) | nindent 6 }}
{{- end }}
{{- end -}}

{{- define "meshserve.operatorServiceAccount" -}}
{{- default (include "meshserve.componentName" (list . "operator")) .Values.operator.serviceAccount.name -}}
{{- end -}}

{{/*
A pod template's annotations: a checksum of the chart's etcd_connection (the processes read it at
start, so a change rolls them) and the component's own. Call with (dict "root" $ "values" .Values.<component>).
*/}}
{{- define "meshserve.podAnnotations" -}}
{{- $annotations := deepCopy (.values.podAnnotations | default dict) -}}
{{- if not .root.Values.etcd.external.enabled -}}
{{- $_ := set $annotations "checksum/etcd-connection" (include "meshserve.etcdConnection" .root | sha256sum) -}}
{{- end -}}
{{- with $annotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
Auth (values auth): the flags, mounts and volumes of a process serving the management API or
inference (router, controller). Secrets are mounted as folders, not subPaths, so that a
rotated Secret reaches the file and the process re-reads it.
*/}}
{{- define "meshserve.authMount" -}}/etc/meshserve/auth{{- end -}}
{{- define "meshserve.managementTokenFile" -}}{{ include "meshserve.authMount" . }}/management/{{ .Values.auth.managementTokenKey }}{{- end -}}
{{- define "meshserve.inferenceTokenFile" -}}{{ include "meshserve.authMount" . }}/inference/{{ .Values.auth.inferenceTokenKey }}{{- end -}}

{{- define "meshserve.authArgs" -}}
{{- $a := .Values.auth -}}
{{- if $a.managementTokenSecret }}
- --management-token-file
- {{ include "meshserve.managementTokenFile" . | quote }}
{{- end }}
{{- if $a.inferenceTokenSecret }}
- --inference-token-file
- {{ include "meshserve.inferenceTokenFile" . | quote }}
{{- end }}
{{- if $a.managementClientIdentities }}
- --management-client-identities
- {{ join "," $a.managementClientIdentities | quote }}
{{- end }}
{{- end -}}

{{- define "meshserve.authVolumeMounts" -}}
{{- if .Values.auth.managementTokenSecret }}
- name: management-tokens
  mountPath: {{ include "meshserve.authMount" . }}/management
  readOnly: true
{{- end }}
{{- if .Values.auth.inferenceTokenSecret }}
- name: inference-tokens
  mountPath: {{ include "meshserve.authMount" . }}/inference
  readOnly: true
{{- end }}
{{- end -}}

{{- define "meshserve.authVolumes" -}}
{{- if .Values.auth.managementTokenSecret }}
- name: management-tokens
  secret:
    secretName: {{ .Values.auth.managementTokenSecret }}
{{- end }}
{{- if .Values.auth.inferenceTokenSecret }}
- name: inference-tokens
  secret:
    secretName: {{ .Values.auth.inferenceTokenSecret }}
{{- end }}
{{- end -}}
