"""The feature store's governed side: definitions, data quality, on-demand transformations, lineage events.

Stores themselves are plugins (``falaj.plugins.feature_store``, ``falaj.plugins.redis_online``); this package
holds what every store shares and what the control plane runs before it hands rows to one.
"""
