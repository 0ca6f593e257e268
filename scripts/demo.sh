#!/usr/bin/env bash
# Run the main job on the bundled real logs: the agent once into a fresh store, the catalog
# import, the nightly reports; then print where the reports are.
set -euo pipefail

bin="$1"
report_date="$2"
config="examples/clicktrail.toml"

rm -rf demo-output
"$bin/clicktrail-agent" check-config --config "$config"
"$bin/clicktrail-agent" once --config "$config"
"$bin/clicktrail-report" import-catalog --config "$config" examples/catalog/deliveries/*.json
"$bin/clicktrail-report" nightly --config "$config" --date "$report_date"

echo
echo "Reports for $report_date:"
find "demo-output/reports/$report_date" -name '*.pdf' -printf '  %p\n' | sort
echo "  demo-output/reports/$report_date/index.html"
