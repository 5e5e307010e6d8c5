// Runs one SQL query with DuckDB (@duckdb/node-api) in the folder named by
// the first argument, reading the SQL from stdin, and prints the rows as
// one JSON array. The tests use it to run the README's example query over
// a real store; require finds the package through NODE_PATH, the
// node_modules folder `make tools` fills (.cache/duckdb/node_modules).
const { DuckDBInstance } = require('@duckdb/node-api');

async function main() {
  process.chdir(process.argv[2]);
  let sql = '';
  for await (const chunk of process.stdin) sql += chunk;
  const db = await DuckDBInstance.create(':memory:');
  const conn = await db.connect();
  const reader = await conn.runAndReadAll(sql);
  process.stdout.write(JSON.stringify(reader.getRowObjectsJson()) + '\n');
}

main().catch((err) => {
  process.stderr.write(`duckdb: ${err.message}\n`);
  process.exit(1);
});
