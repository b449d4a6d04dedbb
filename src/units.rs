//! Sizes in bytes as people write and read them: `512M` or `4G` in a flag, `1.5 GiB` in a
//! message. Below every other part, the error type included (whose messages print sizes): it
//! imports nothing of tessera's, and a caller turns a refusal into its flag's error.

/// `1.5 GiB`, `12.0 MiB`: sizes in the unit a user thinks in.
pub fn human_bytes(bytes: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    let b = bytes as f64;
    if b >= GIB {
        format!("{:.1} GiB", b / GIB)
    } else {
        format!("{:.1} MiB", b / MIB)
    }
}

/// Parses a size like `512M`, `4G`, `1024` (bytes), `64K`.
///
/// # Errors
/// What is wrong with `text`, for the caller to name its flag.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, unit) = t.split_at(
        t.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(t.len()),
    );
    let value: f64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 512M or 4G"))?;
    let scale = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "K" | "KB" | "KIB" => 1024.0,
        "M" | "MB" | "MIB" => 1048576.0,
        "G" | "GB" | "GIB" => 1073741824.0,
        "T" | "TB" | "TIB" => 1099511627776.0,
        other => return Err(format!("unknown unit {other:?} in {text:?}")),
    };
    Ok((value * scale) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5K").unwrap(), 1536);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("3X").is_err());
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
        assert_eq!(human_bytes(12 << 20), "12.0 MiB");
    }
}
