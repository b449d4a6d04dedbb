#[cfg(test)]
mod harness;
