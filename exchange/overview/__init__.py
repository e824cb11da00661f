"""Pages that read across the exchange's packages: the dataset page (catalogue entry, the
caller's view and preview, receivers, data flow) and the dashboard."""
