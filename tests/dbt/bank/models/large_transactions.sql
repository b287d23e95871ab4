{{ config(materialized='ephemeral', enabled=var('fedsql_run', false)) }}
SELECT t.tx_id, c.region, t.amount
FROM bank.transactions t JOIN bank.customers c USING (customer_id)
WHERE t.amount > {{ var('large_amount', 1000) }}
