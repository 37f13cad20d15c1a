//! Fused CPU ops with their own backward pass, where candle's fast kernels have none.
