"""What the scorer bentos share: model slots, registry following, fault injection, metrics."""
