// Copies the front-end dependencies pinned by package-lock.json into
// ../static/ui/vendor/, where the Go build embeds them. Run through
// `make ui` (npm ci && npm run build); commit the result.
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const vendor = join(here, "..", "static", "ui", "vendor");
mkdirSync(vendor, { recursive: true });

const echarts = join(here, "node_modules", "echarts");
const { version } = JSON.parse(readFileSync(join(echarts, "package.json"), "utf8"));
copyFileSync(join(echarts, "dist", "echarts.min.js"), join(vendor, "echarts.min.js"));
copyFileSync(join(echarts, "LICENSE"), join(vendor, "echarts.LICENSE"));
writeFileSync(join(vendor, "VERSIONS"), `echarts ${version}\n`);
console.log(`vendored echarts ${version} into ${vendor}`);
