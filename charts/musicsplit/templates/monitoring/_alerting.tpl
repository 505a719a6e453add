{{/*
Alert routing, one source for the bundled Alertmanager (alertmanager.yml) and
the AlertmanagerConfig: critical -> PagerDuty (Events v2), warning -> Slack,
Watchdog -> the dead man's switch; a critical alert inhibits the warning of
the same alertname and namespace.

Secrets given as values are written into the quickstart config itself (it is
a Secret); from an existingSecret they are read as files mounted under
/etc/alertmanager/secrets/<secret>/<key>.
*/}}
{{- define "musicsplit.alertmanagerConfig" -}}
{{- $a := .Values.alerting }}
{{- /* Alertmanager templates, not Helm's (string literals are not parsed): the
incident's summary and severity are the alerts' own (PagerDuty's default
severity would be "error"), and the runbook is a link on it. */}}
{{- $pdSummary := "{{ if .CommonAnnotations.summary }}{{ .CommonAnnotations.summary }}{{ else }}{{ template \"pagerduty.default.description\" . }}{{ end }}" }}
{{- $runbook := dict "href" "{{ .CommonAnnotations.runbook_url }}" "text" "runbook" }}
{{- $pd := dict "url" $a.pagerduty.url "send_resolved" true "description" $pdSummary "links" (list $runbook) "severity" "{{ .CommonLabels.severity }}" }}
{{- if $a.pagerduty.routingKey.existingSecret }}
{{- $_ := set $pd "routing_key_file" (printf "/etc/alertmanager/secrets/%s/%s" $a.pagerduty.routingKey.existingSecret $a.pagerduty.routingKey.key) }}
{{- else }}
{{- $_ := set $pd "routing_key" $a.pagerduty.routingKey.value }}
{{- end }}
{{- $slack := dict "channel" $a.slack.channel "send_resolved" true }}
{{- if $a.slack.webhookUrl.existingSecret }}
{{- $_ := set $slack "api_url_file" (printf "/etc/alertmanager/secrets/%s/%s" $a.slack.webhookUrl.existingSecret $a.slack.webhookUrl.key) }}
{{- else }}
{{- $_ := set $slack "api_url" $a.slack.webhookUrl.value }}
{{- end }}
{{- $pagerduty := dict "name" "pagerduty" }}
{{- if include "musicsplit.secretSet" $a.pagerduty.routingKey }}
{{- $_ := set $pagerduty "pagerduty_configs" (list $pd) }}
{{- end }}
{{- $slackReceiver := dict "name" "slack" }}
{{- if include "musicsplit.secretSet" $a.slack.webhookUrl }}
{{- $_ := set $slackReceiver "slack_configs" (list $slack) }}
{{- end }}
{{- $watchdog := dict "name" "watchdog" }}
{{- if $a.watchdog.url }}
{{- $_ := set $watchdog "webhook_configs" (list (dict "url" $a.watchdog.url "send_resolved" false)) }}
{{- end }}
{{- $config := dict
  "route" (dict
    "receiver" "slack"
    "group_by" $a.groupBy
    "group_wait" $a.groupWait
    "group_interval" $a.groupInterval
    "repeat_interval" $a.repeatInterval
    "routes" (list
      (dict "receiver" "watchdog" "matchers" (list "alertname=\"Watchdog\"") "repeat_interval" $a.watchdog.repeatInterval)
      (dict "receiver" "pagerduty" "matchers" (list "severity=\"critical\""))
      (dict "receiver" "slack" "matchers" (list "severity=\"warning\""))))
  "receivers" (list $pagerduty $slackReceiver $watchdog)
  "inhibit_rules" (list (dict
    "source_matchers" (list "severity=\"critical\"")
    "target_matchers" (list "severity=\"warning\"")
    "equal" (list "alertname" "namespace")))
}}
{{- toYaml $config }}
{{- end }}

{{/* The Secret holding alerting secrets given as values (for the AlertmanagerConfig). */}}
{{- define "musicsplit.alertingSecretName" -}}
{{- include "musicsplit.componentName" (dict "root" . "component" "alerting") }}
{{- end }}
