{{ config(materialized='model', enabled=var('fedsql_run', false)) }}
TRAIN MODEL {{ this.identifier }} USING logistic_regression PREDICT is_fraud
FROM (SELECT ln(t.amount) AS log_amount, t.channel, t.merchant_category, c.credit_score,
             c.region, t.is_fraud
      FROM bank.transactions t JOIN bank.customers c USING (customer_id))
FEDERATED BY region
WITH (rounds = 3, learning_rate = 0.1, seed = 1)
