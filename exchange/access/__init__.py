"""Who may see what: access requests and their decisions, grants (with the DPO's second
approval, expiry, renewal and recertification), and the one rule of access,
``policy.effective_view``. Every data path in the exchange asks the policy; nothing else
decides which fields and rows a principal sees."""
