#!/bin/sh
# A stand-in for a coding agent, so that `productbuilder demo` and the tests show the whole build
# loop with no agent installed. It speaks Claude Code's stream-json (`agent_format =
# "claude-stream-json"`): progress lines, then one result line, which is what the daemon judges.
#
# Usage (as [builds] agent_command): agent.sh "{prompt}" [seconds to work]
# It runs in the build's checkout and edits the example app's page as an agent would. The prompt
# is hostile text: it is only ever printed through printf's %s and JSON-escaped by sed, never run.
set -eu
prompt=${1:-}
work=${2:-0}

say() { printf '%s\n' "$1"; }
json_text() { printf '%s' "$1" | head -c 200 | tr '\n\r\t' '   ' | sed 's/\\/\\\\/g; s/"/\\"/g'; }

say '{"type":"system","subtype":"init","session_id":"scripted","model":"scripted-agent","tools":["Edit"]}'
say "{\"type\":\"assistant\",\"message\":{\"content\":[{\"type\":\"text\",\"text\":\"Asked: $(json_text "$prompt")\"}]}}"

page=www/index.html
if [ ! -f "$page" ]; then
  say '{"type":"result","subtype":"error_during_execution","is_error":true,"num_turns":1,"result":"no www/index.html in this checkout"}'
  exit 1
fi
say '{"type":"assistant","message":{"content":[{"type":"tool_use","id":"t1","name":"Edit","input":{"file_path":"www/index.html"}}]}}'
printf '<p>Changed by the scripted agent.</p>\n' >> "$page"
# Optional slow work (a budget test, or a demo you can watch): one progress line a second.
i=0
while [ "$i" -lt "$work" ]; do
  i=$((i + 1))
  say "{\"type\":\"assistant\",\"message\":{\"content\":[{\"type\":\"text\",\"text\":\"working ($i)\"}]}}"
  sleep 1
done
say '{"type":"result","subtype":"success","is_error":false,"num_turns":2,"total_cost_usd":0,"result":"Added a line to www/index.html."}'
