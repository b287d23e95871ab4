{{ config(materialized='incremental', unique_key='region', enabled=var('fedsql_run', false)) }}
SELECT region, count(*) AS large_transactions, max(amount) AS largest
FROM {{ ref('large_transactions') }}
GROUP BY region
