//! `grove-sim`: runs a fleet of simulated devices against a Grove gateway.
//!
//! Each simulated device will be the firmware's own device core (`grove-firmware`) over std TCP, with
//! simulated embedded-hal sensors, driven by scenario files with expectations. Until the firmware's device
//! core lands (issue 8 builds on issue 7), the binary only reports that no scenario runner exists yet.

fn main() {
    eprintln!("grove-sim: the scenario runner is not built yet (see issue 8)");
    std::process::exit(2);
}
