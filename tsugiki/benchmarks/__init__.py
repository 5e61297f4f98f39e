"""Japanese benchmark loaders, metrics and leaderboards."""
