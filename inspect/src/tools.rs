//! The tools of one VM, as its version's run loop holds them: `--trace`, `--stats`, `--gdb`, and
//! the crash report and code check when the VM ends. Only what a run asked for exists; the
//! image's symbols are read at first use, so a run with no tool whose guest halts with its image
//! intact opens no `NAME.elf`. The version builds [`Tools`] from plain values (where its RAM
//! holds what, the image's path and bytes); what needs KVM stays in the version.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use crate::MemoryMap;
use crate::crash::Explain;
use crate::gdb::{Debugger, Pause};
use crate::stats::Stats;
use crate::symbols::SymbolFile;
use crate::trace::Trace;

/// The tools of a VM. Only what was asked for exists; the symbols are read at first use.
#[derive(Debug)]
pub struct Tools {
    pub trace: Option<Trace>,
    pub stats: Option<Stats>,
    pub debugger: Option<Debugger>,
    /// Where the VM's RAM holds what, for the crash report, the code check and `monitor mem`.
    pub map: MemoryMap,
    /// The image's path (its symbols are in `NAME.elf` beside it) and its bytes as loaded.
    pub image_path: PathBuf,
    pub image: Arc<[u8]>,
    /// The image's symbols: empty until a tool asks ([`Tools::symbols`]), unless the version
    /// shares one file between the VMs of an image.
    pub symbols: OnceLock<Arc<SymbolFile>>,
}

impl Tools {
    /// The image's symbols, from `NAME.elf` beside it: read the first time a tool asks.
    pub fn symbols(&self) -> Arc<SymbolFile> {
        let file = || Arc::new(SymbolFile::new(&self.image_path, Arc::clone(&self.image)));
        Arc::clone(self.symbols.get_or_init(file))
    }

    /// The crash report and the code check; `tables` are the page tables as the version built
    /// them (made again when the report needs them, to compare with RAM; empty: no comparison).
    pub fn explain(&self, tables: Vec<u8>) -> Explain {
        Explain::new(self.map, self.symbols(), tables)
    }

    /// `--gdb`: the debugger for the VM, on the listening socket; gdb's Ctrl-C goes through
    /// `pause`; `data_watch`: whether this host fires data breakpoints (the version's probe).
    pub fn debug_with(&mut self, listener: TcpListener, pause: impl Pause + 'static, data_watch: bool) {
        let debugger = Debugger::new(listener, Arc::new(pause), &self.image_path, self.map, data_watch);
        self.debugger = Some(debugger);
    }
}
