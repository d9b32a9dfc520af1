"""The seqinfer server: stateful, batched GRU inference over gRPC."""
