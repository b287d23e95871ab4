{{ config(materialized='table') }}
SELECT region, transactions FROM {{ ref('region_activity') }} WHERE transactions > {{ var('min_transactions', 0) }}
