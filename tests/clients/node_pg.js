// node-postgres (`pg` from npm) against fedsql: prints one JSON line with
// what it read, for tests/python/test_other_clients.py to compare.
// Usage: node node_pg.js PORT
const { Client } = require("pg");

async function main() {
  const client = new Client({ host: "127.0.0.1", port: Number(process.argv[2]), user: "fedsql", database: "demo" });
  await client.connect();
  const out = {};
  // Simple protocol.
  const simple = await client.query("SELECT region, count(*) FROM bank.customers GROUP BY region ORDER BY region");
  out.simple = simple.rows.map((r) => [r.region, Number(r.count)]);
  out.simpleFields = simple.fields.map((f) => f.name);
  // Extended protocol with parameters, typed results.
  const params = await client.query(
    "SELECT customer_id, income, region FROM bank.customers WHERE customer_id BETWEEN $1 AND $2 ORDER BY customer_id",
    [10, 12]);
  out.params = params.rows.map((r) => [Number(r.customer_id), r.income, r.region]);
  // A named prepared statement, executed twice.
  for (const region of ["eu", "us"]) {
    const r = await client.query({ name: "by_region", text: "SELECT count(*) AS n FROM bank.customers WHERE region = $1", values: [region] });
    out[region] = Number(r.rows[0].n);
  }
  // Errors carry the SQLSTATE, and the connection keeps working.
  try {
    await client.query("SELECT * FROM bank.nope");
  } catch (e) {
    out.error = e.code;
  }
  out.after = (await client.query("SELECT 1 + 1 AS two")).rows[0].two;
  await client.end();
  console.log(JSON.stringify(out));
}

main().catch((e) => { console.error(e); process.exit(1); });
