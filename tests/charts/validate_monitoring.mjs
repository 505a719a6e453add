// Validates prometheus-operator custom resources (ServiceMonitor, PodMonitor,
// PrometheusRule, AlertmanagerConfig, ...) with @kubernetes-models/prometheus-operator,
// whose validators are generated from prometheus-operator's CRD schemas.
// stdin: a JSON array of objects; stdout: a JSON array of
// {kind, name, error} (error null when the object is valid).
// argv[2]: the folder holding node_modules (.ci/install-charts.sh's KUBERNETES_MODELS_DIR).
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const root = join(process.argv[2], "node_modules", "@kubernetes-models", "prometheus-operator");
const objects = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const obj of objects) {
  const [group, version] = obj.apiVersion.split("/");
  const module = pathToFileURL(join(root, group, version, `${obj.kind}.js`)).href;
  let error = null;
  try {
    const Model = (await import(module))[obj.kind];
    new Model(obj).validate();
  } catch (e) {
    error = String(e.message || e);
  }
  results.push({ kind: obj.kind, name: obj.metadata?.name, error });
}
process.stdout.write(JSON.stringify(results));
