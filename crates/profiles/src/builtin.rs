//! The checked-in profiles, embedded at compile time.

/// Every profile in `firmware-profiles/`, as `(name, TOML text)`.
///
/// The name is the file stem and equals the profile's `name` field. A test checks that this
/// list covers every `*.toml` file in the directory.
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "ci-loopback",
        include_str!("../../../firmware-profiles/ci-loopback.toml"),
    ),
    (
        "ci-models",
        include_str!("../../../firmware-profiles/ci-models.toml"),
    ),
    (
        "command-post-server",
        include_str!("../../../firmware-profiles/command-post-server.toml"),
    ),
    (
        "jetson-orin-nano-8gb",
        include_str!("../../../firmware-profiles/jetson-orin-nano-8gb.toml"),
    ),
    (
        "rpi4-4gb",
        include_str!("../../../firmware-profiles/rpi4-4gb.toml"),
    ),
    (
        "rugged-laptop-x86",
        include_str!("../../../firmware-profiles/rugged-laptop-x86.toml"),
    ),
];
