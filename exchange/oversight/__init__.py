"""The auditors' desk over the trail: the explorer and its filters, exports, person and
department reports, a dataset's grant timeline, who could see a field at a moment, and
verification through the API and the web."""
