{{ config(materialized='table') }}
SELECT s.segment, s.label, count(c.customer_id) AS customers
FROM {{ ref('segments') }} s LEFT JOIN bank.customers c ON c.segment = s.segment
GROUP BY s.segment, s.label
