{{ config(materialized='table', enabled=var('fedsql_run', false)) }}
SELECT c.region,
       sum(CASE WHEN predict('{{ ref("fraud").identifier }}', ln(t.amount), t.channel,
                             t.merchant_category, c.credit_score) THEN 1 ELSE 0 END) AS flagged,
       count(*) AS transactions
FROM bank.transactions t JOIN bank.customers c USING (customer_id)
GROUP BY c.region
