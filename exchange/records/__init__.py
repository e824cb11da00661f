"""The data itself: each dataset's store table (store), the SQL projection of an effective view
with its pages and exports (selectors), the records API, the records page and the CKAN
DataStore actions. Every read is projected by the policy and audited."""
