//! A guest's accesses to ports the VM does not have: the version ignores an `out` and answers an
//! `in` with 0xFF (as an empty ISA bus does), and this says so, once per port, for the first
//! [`WARNED_PORTS`] ports; past them, one line says the rest go unreported (docs/REFERENCE.md §4).

/// Unknown ports that get a warning each.
pub const WARNED_PORTS: usize = 16;

/// The unknown ports a VM warned about.
#[derive(Debug, Default)]
pub struct UnknownPorts {
    warned: Vec<u16>,
}

impl UnknownPorts {
    /// The guest of VM `label` accessed `port` (`is_in`: an `in`): its warning on stderr, if it
    /// gets one.
    pub fn warn(&mut self, port: u16, is_in: bool, label: &str) {
        if let Some(line) = self.warning(port, is_in, label) {
            diag!("{line}");
        }
    }

    /// The words of [`UnknownPorts::warn`].
    fn warning(&mut self, port: u16, is_in: bool, label: &str) -> Option<String> {
        if self.warned.len() > WARNED_PORTS || self.warned.contains(&port) {
            return None;
        }
        self.warned.push(port);
        if self.warned.len() > WARNED_PORTS {
            return Some(format!(
                "mini_hypervisor: warning: {label}: more unknown ports: not reported any more (--trace shows every access)"
            ));
        }
        let (what, effect) = if is_in { ("in from", "reads 0xff") } else { ("out to", "ignored") };
        Some(format!(
            "mini_hypervisor: warning: {label}: {what} unknown port {port:#x} {effect} (not reported again for this port)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_port_for_the_first_sixteen_then_one_line_for_the_rest() {
        let mut ports = UnknownPorts::default();
        assert_eq!(
            ports.warning(0x80, true, "vm0").unwrap(),
            "mini_hypervisor: warning: vm0: in from unknown port 0x80 reads 0xff (not reported again for this port)"
        );
        assert_eq!(ports.warning(0x80, false, "vm0"), None, "once per port, in or out");
        assert_eq!(
            ports.warning(0x3f8, false, "vm0").unwrap(),
            "mini_hypervisor: warning: vm0: out to unknown port 0x3f8 ignored (not reported again for this port)"
        );
        for port in 1..=WARNED_PORTS as u16 - 2 {
            assert!(ports.warning(port, false, "vm0").unwrap().contains(&format!("unknown port {port:#x} ")));
        }
        assert_eq!(
            ports.warning(0x1000, false, "vm0").unwrap(),
            "mini_hypervisor: warning: vm0: more unknown ports: not reported any more (--trace shows every access)"
        );
        assert_eq!(ports.warning(0x1001, true, "vm0"), None, "then nothing");
        assert_eq!(ports.warning(0x80, true, "vm0"), None);
    }
}
