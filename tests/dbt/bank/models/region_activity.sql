{{ config(materialized='view') }}
SELECT c.region, count(*) AS transactions, sum(t.amount) AS amount
FROM bank.transactions t JOIN bank.customers c USING (customer_id)
GROUP BY c.region
