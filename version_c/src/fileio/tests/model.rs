//! Randomized: seeded sequences of requests, whole, cut short or malformed, against a model of
//! the protocol written from its rules.

use super::*;
use inspect::test_rng::Rng;

/// The answer the model has waiting for `in`s.
#[derive(Debug)]
enum Pending {
    Nothing,
    Bytes(std::collections::VecDeque<u8>),
    Dword(u32),
}

#[derive(Debug, Clone)]
struct ModelFile {
    name: Vec<u8>,
    write: bool,
    /// Opened on the VM's private file (else on the shared original).
    private: bool,
    /// Read position.
    pos: usize,
}

/// The file device as its rules describe it, written from those rules and not from the code
/// above: a request is the list of bytes (and dwords) received so far, and it is decided
/// when that list is complete. Files live in maps, guest RAM in a Vec.
struct Model {
    req: Vec<u8>,
    dwords: Vec<u32>,
    pending: Pending,
    table: Vec<Option<ModelFile>>,
    private: std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    shared: std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    ram: Vec<u8>,
}

impl Model {
    fn new(shared: &[(&str, &[u8])], ram_size: usize) -> Model {
        Model {
            req: Vec::new(),
            dwords: Vec::new(),
            pending: Pending::Nothing,
            table: vec![None; 16],
            private: Default::default(),
            shared: shared.iter().map(|(n, b)| (n.as_bytes().to_vec(), b.to_vec())).collect(),
            ram: vec![0; ram_size],
        }
    }

    fn idle(&mut self) {
        self.req.clear();
        self.dwords.clear();
        self.pending = Pending::Nothing;
    }

    /// A bulk request that has its command and vfd waits for its two dwords.
    fn wants_dword(&self) -> bool {
        matches!(self.req.first(), Some(&(CMD_READ_BULK | CMD_WRITE_BULK))) && self.req.len() == 2
    }

    fn out(&mut self, data: &[u8]) {
        match *data {
            [b] if self.wants_dword() => {
                let _ = b;
                self.idle();
            }
            [b] => {
                if self.req.is_empty() {
                    // A new command; an answer not (fully) read is dropped.
                    self.pending = Pending::Nothing;
                }
                self.req.push(b);
                self.decide();
            }
            [a, b, c, d] if self.wants_dword() => {
                self.dwords.push(u32::from_le_bytes([a, b, c, d]));
                if self.dwords.len() == 2 {
                    let op = self.req[0];
                    let vfd = self.req[1];
                    let (address, length) = (self.dwords[0], self.dwords[1]);
                    let answer = self.bulk(op, vfd, address, length);
                    self.req.clear();
                    self.dwords.clear();
                    self.pending = Pending::Dword(answer);
                }
            }
            _ => self.idle(),
        }
    }

    fn inp(&mut self, size: usize) -> Vec<u8> {
        let waiting = self.req.is_empty();
        match (size, &mut self.pending) {
            (1, Pending::Bytes(bytes)) if waiting => {
                let b = bytes.pop_front().unwrap();
                if bytes.is_empty() {
                    self.pending = Pending::Nothing;
                }
                vec![b]
            }
            (4, Pending::Dword(v)) if waiting => {
                let v = *v;
                self.pending = Pending::Nothing;
                v.to_le_bytes().to_vec()
            }
            _ => {
                self.idle();
                vec![0xFF; size]
            }
        }
    }

    /// If the request in `req` is complete, carry it out and make its answer pending.
    fn decide(&mut self) {
        let r = self.req.clone();
        let answer: Option<Vec<u8>> = match r[0] {
            CMD_OPEN if r.len() >= 3 => {
                let len = usize::from(r[2]);
                if len == 0 {
                    Some(vec![ERROR])
                } else if r.len() - 3 == len {
                    Some(vec![self.open(r[1], &r[3..])])
                } else {
                    None
                }
            }
            CMD_OPEN => None,
            CMD_CLOSE if r.len() == 2 => Some(vec![self.close(r[1])]),
            CMD_READ if r.len() == 3 => Some(self.read(r[1], r[2])),
            CMD_WRITE if r.len() >= 3 && r.len() - 3 == usize::from(r[2]) => Some(vec![self.write(r[1], &r[3..])]),
            CMD_CLOSE | CMD_READ | CMD_WRITE | CMD_READ_BULK | CMD_WRITE_BULK => None,
            _ => Some(vec![ERROR]),
        };
        if let Some(answer) = answer {
            self.req.clear();
            self.pending = Pending::Bytes(answer.into());
        }
    }

    fn name_ok(name: &[u8]) -> bool {
        (1..=254).contains(&name.len()) && !name.contains(&b'/') && !name.contains(&0) && name != b"." && name != b".."
    }

    fn open(&mut self, flags: u8, name: &[u8]) -> u8 {
        if flags > 1 || !Model::name_ok(name) {
            return ERROR;
        }
        let Some(vfd) = self.table.iter().position(Option::is_none) else {
            return ERROR;
        };
        let private = if flags == 0 {
            if self.private.contains_key(name) {
                true
            } else if self.shared.contains_key(name) {
                false
            } else {
                return ERROR;
            }
        } else {
            if !self.private.contains_key(name) {
                let copy = self.shared.get(name).cloned().unwrap_or_default();
                self.private.insert(name.to_vec(), copy);
            }
            true
        };
        self.table[vfd] = Some(ModelFile { name: name.to_vec(), write: flags == 1, private, pos: 0 });
        u8::try_from(vfd).unwrap()
    }

    fn close(&mut self, vfd: u8) -> u8 {
        match self.table.get_mut(usize::from(vfd)).and_then(Option::take) {
            Some(_) => 0,
            None => ERROR,
        }
    }

    fn file(&mut self, vfd: u8, write: bool) -> Option<&mut ModelFile> {
        self.table.get_mut(usize::from(vfd)).and_then(Option::as_mut).filter(|f| f.write == write)
    }

    /// Reads up to `max` bytes at the read position of `vfd` (open for read).
    fn take(&mut self, vfd: u8, max: usize) -> Vec<u8> {
        let f = self.table[usize::from(vfd)].clone().unwrap();
        let content = if f.private { &self.private[&f.name] } else { &self.shared[&f.name] };
        let data = content[f.pos.min(content.len())..].iter().take(max).copied().collect::<Vec<u8>>();
        self.table[usize::from(vfd)].as_mut().unwrap().pos += data.len();
        data
    }

    fn read(&mut self, vfd: u8, count: u8) -> Vec<u8> {
        if self.file(vfd, false).is_none() {
            return vec![ERROR];
        }
        let data = self.take(vfd, usize::from(count).min(127));
        let mut answer = vec![u8::try_from(data.len()).unwrap()];
        answer.extend(data);
        answer
    }

    fn write(&mut self, vfd: u8, data: &[u8]) -> u8 {
        if data.len() > 127 {
            return ERROR;
        }
        let Some(f) = self.file(vfd, true) else {
            return ERROR;
        };
        let name = f.name.clone();
        self.private.get_mut(&name).unwrap().extend_from_slice(data);
        u8::try_from(data.len()).unwrap()
    }

    fn bulk(&mut self, op: u8, vfd: u8, address: u32, length: u32) -> u32 {
        let write = op == CMD_WRITE_BULK;
        if self.file(vfd, write).is_none() {
            return ERROR_DWORD;
        }
        if length == 0 {
            return 0;
        }
        let (start, len) = (usize::try_from(address).unwrap(), usize::try_from(length).unwrap());
        if u64::from(address) + u64::from(length) > u64::try_from(self.ram.len()).unwrap() {
            return ERROR_DWORD;
        }
        if write {
            let name = self.file(vfd, true).unwrap().name.clone();
            let bytes = self.ram[start..start + len].to_vec();
            self.private.get_mut(&name).unwrap().extend(bytes);
            length
        } else {
            let data = self.take(vfd, len);
            self.ram[start..start + data.len()].copy_from_slice(&data);
            u32::try_from(data.len()).unwrap()
        }
    }
}

/// One port access of a random sequence.
#[derive(Debug, Clone, Copy)]
enum Op {
    Out(u32, usize),
    In(usize),
}

/// The names the random requests use: private and shared ones, and invalid ones.
const NAMES: [&[u8]; 10] = [b"a", b"b", b"s", b"t", b"", b".", b"..", b"a/b", b"x\0", b"s.txt"];

/// A random sequence of accesses: whole requests (with their answers read, or not, or with
/// the wrong size), requests cut short, and single stray accesses.
fn random_ops(rng: &mut Rng, model: &Model, ops: &mut Vec<Op>) {
    for _ in 0..1 + rng.index(6) {
        let start = ops.len();
        match rng.index(100) {
            0..=17 => push_open(rng, ops),
            18..=29 => {
                ops.extend([b(CMD_CLOSE), b(open_vfd(rng, model))]);
                ops.push(Op::In(1));
            }
            30..=47 => {
                let count = *rng.pick(&[0, 1, 2, 5, 50, 127, 128, 200, 255]);
                ops.extend([b(CMD_READ), b(open_vfd(rng, model)), b(count)]);
                // The count, then (usually) every data byte, sometimes a few too many.
                let ins = 1 + usize::from(count.min(127)) + *rng.pick(&[0, 0, 0, 1, 3]);
                ops.extend((0..ins).map(|_| Op::In(1)));
            }
            48..=65 => {
                let count = *rng.pick(&[0, 1, 3, 10, 127, 128, 200]);
                ops.extend([b(CMD_WRITE), b(open_vfd(rng, model)), b(count)]);
                ops.extend((0..count).map(|_| b(rng.byte())));
                ops.push(Op::In(1));
            }
            66..=79 => push_bulk(rng, model, ops),
            80..=89 => ops.push(stray_out(rng)),
            _ => ops.push(Op::In(*rng.pick(&[1, 1, 2, 3, 4]))),
        }
        mangle(rng, ops, start);
    }
}

/// One byte `out`.
fn b(v: u8) -> Op {
    Op::Out(u32::from(v), 1)
}

/// A vfd for a request: mostly an open one, sometimes any, sometimes out of range.
fn open_vfd(rng: &mut Rng, model: &Model) -> u8 {
    let open: Vec<usize> = (0..16).filter(|&i| model.table[i].is_some()).collect();
    match rng.index(10) {
        0 => *rng.pick(&[16, 17, 127, 128, 255]),
        1..=2 => u8::try_from(rng.index(16)).unwrap(),
        _ if open.is_empty() => 0,
        _ => u8::try_from(*rng.pick(&open)).unwrap(),
    }
}

fn push_open(rng: &mut Rng, ops: &mut Vec<Op>) {
    let name: Vec<u8> = match rng.index(40) {
        0 => vec![b'L'; 254],
        1 => vec![b'z'; 255],
        _ => rng.pick(&NAMES).to_vec(),
    };
    let flags = *rng.pick(&[0, 0, 0, 1, 1, 1, 2, 3, 0xFF]);
    ops.extend([b(CMD_OPEN), b(flags), b(u8::try_from(name.len()).unwrap_or(255))]);
    ops.extend(name.iter().map(|&c| b(c)));
    ops.push(Op::In(1));
}

fn push_bulk(rng: &mut Rng, model: &Model, ops: &mut Vec<Op>) {
    let ram = u32::try_from(model.ram.len()).unwrap();
    let op = *rng.pick(&[CMD_READ_BULK, CMD_WRITE_BULK]);
    let address = match rng.index(6) {
        0 => *rng.pick(&[0, ram - 1, ram, ram + 1, u32::MAX]),
        _ => u32::try_from(rng.index(model.ram.len())).unwrap(),
    };
    let length = match rng.index(6) {
        0 => *rng.pick(&[0, 1, ram, ram + 1, u32::MAX]),
        _ => u32::try_from(rng.index(700)).unwrap(),
    };
    ops.extend([b(op), b(open_vfd(rng, model)), Op::Out(address, 4), Op::Out(length, 4), Op::In(4)]);
}

/// A stray out: a command-ish byte, a dword, or a wrong size.
fn stray_out(rng: &mut Rng) -> Op {
    match rng.index(4) {
        0 => Op::Out(rng.index(256).try_into().unwrap(), *rng.pick(&[2, 3])),
        1 => Op::Out(u32::try_from(rng.next() >> 32).unwrap(), 4),
        _ => b(*rng.pick(&[0, 1, 2, 3, 4, 5, 6, 7, 0x7F, 0xFF])),
    }
}

/// Sometimes cuts the request that begins at `ops[start]` short, or reads its answer with the
/// wrong size.
fn mangle(rng: &mut Rng, ops: &mut Vec<Op>, start: usize) {
    if ops.len() - start > 1 {
        match rng.index(20) {
            0 => ops.truncate(start + 1 + rng.index(ops.len() - start - 1)),
            1 => {
                let last = ops.len() - 1;
                if let Op::In(size) = ops[last] {
                    ops[last] = Op::In(if size == 1 { *rng.pick(&[2, 4]) } else { *rng.pick(&[1, 2]) });
                }
            }
            _ => {}
        }
    }
}

/// Every host file of the private directory is exactly the model's, and nothing else is
/// there.
fn assert_files_match(private: &std::path::Path, model: &Model, context: &dyn Fn() -> String) {
    let mut names: Vec<Vec<u8>> = match fs::read_dir(private) {
        Ok(dir) => dir.map(|e| e.unwrap().file_name().into_encoded_bytes()).collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    let expected: Vec<Vec<u8>> = model.private.keys().cloned().collect();
    assert_eq!(names, expected, "private files, {}", context());
    for (name, content) in &model.private {
        let on_disk =
            fs::read(private.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name))).unwrap();
        assert!(
            on_disk == *content,
            "host file {:?}: {} bytes, model {} bytes, {}",
            name.escape_ascii().to_string(),
            on_disk.len(),
            content.len(),
            context()
        );
    }
}

/// The seed: MH_FILEIO_SEED (hex) if set, else a fresh one from the clock.
fn seed() -> u64 {
    match std::env::var("MH_FILEIO_SEED") {
        Ok(s) => u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("MH_FILEIO_SEED is hex"),
        Err(_) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
            (u64::try_from(now.as_nanos() & u128::from(u64::MAX)).unwrap() ^ (u64::from(std::process::id()) << 32)) | 1
        }
    }
}

/// Makes every access of `ops` on the device and on the model, comparing every answer;
/// whether any may have written a host file.
fn play(ops: &[Op], dev: &mut FileDevice, ram: &VecRam, model: &mut Model, context: &dyn Fn() -> String) -> bool {
    let mut wrote = false;
    for (i, &op) in ops.iter().enumerate() {
        match op {
            Op::Out(value, size) => {
                let bytes = value.to_le_bytes();
                let data = if size <= 4 { &bytes[..size] } else { &bytes[..] };
                dev.out(data, ram);
                model.out(data);
                wrote |= matches!(data.first(), Some(&(CMD_OPEN | CMD_WRITE | CMD_WRITE_BULK)));
            }
            Op::In(size) => {
                let mut got = vec![0x5A; size];
                dev.inp(&mut got);
                let want = model.inp(size);
                assert!(
                    got == want,
                    "in of {size} at access {i}: got {got:x?}, model {want:x?}; {}; accesses {ops:?}",
                    context()
                );
            }
        }
    }
    wrote
}

/// Seeded random sequences of byte and bulk requests, every answer and every host-file
/// byte compared with [`Model`]. A fresh seed each run (printed with any failure; set
/// MH_FILEIO_SEED to repeat one).
#[test]
fn random_requests_match_the_model_of_the_protocol() {
    const ROUNDS: usize = 1000;
    const SEQUENCES: usize = 100;
    const RAM: usize = 4096;
    let seed = seed();
    eprintln!("random_requests_match_the_model_of_the_protocol: seed {seed:#x} (MH_FILEIO_SEED={seed:x} repeats it)");
    let mut rng = Rng::new(seed);
    let tmp = TempDir::new("model");
    let shared_content: [(&str, &[u8]); 2] = [("s", &pattern(300)), ("t", b"tiny")];
    let shared = shared_files(&tmp, &shared_content);
    let mut ops = Vec::new();
    let mut sequences = 0usize;
    for round in 0..ROUNDS {
        let private = tmp.join(format!("r{round}"));
        let mut dev = FileDevice::new(Sandbox::new(Arc::clone(&shared), private.clone(), "vm0 (model)".to_owned()));
        let ram = VecRam::new(RAM);
        let mut model = Model::new(&shared_content, RAM);
        for sequence in 0..SEQUENCES {
            let context = || format!("seed {seed:#x}, round {round}, sequence {sequence}");
            // Some new guest data for the bulk writes.
            if rng.chance(20) {
                let at = rng.index(RAM - 64);
                let data: Vec<u8> = (0..64).map(|_| rng.byte()).collect();
                ram.mem.borrow_mut()[at..at + 64].copy_from_slice(&data);
                model.ram[at..at + 64].copy_from_slice(&data);
            }
            ops.clear();
            random_ops(&mut rng, &model, &mut ops);
            let wrote = play(&ops, &mut dev, &ram, &mut model, &context);
            assert!(*ram.mem.borrow() == model.ram, "guest RAM differs, {}; accesses {ops:?}", context());
            if wrote || sequence == SEQUENCES - 1 {
                assert_files_match(&private, &model, &context);
            }
            assert_eq!(dev.open_count(), model.table.iter().flatten().count(), "{}", context());
            sequences += 1;
        }
        drop(dev);
        let _ = fs::remove_dir_all(&private);
    }
    assert_eq!(sequences, ROUNDS * SEQUENCES);
    for (name, content) in shared_content {
        assert_eq!(fs::read(tmp.join("host").join(name)).unwrap(), content, "shared originals are never written");
    }
}
