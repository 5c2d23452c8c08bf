//! The spool writer: one thread per daemon that puts journal batches on disk, so that a slow disk
//! never stalls runnerd's single runtime thread (every stream, `/healthz`, spawns).
//!
//! Journals hand it batches in order through an unbounded channel; what bounds the queue is the
//! journal: each has at most its memory-tail cap of bytes queued, and it keeps those records in
//! memory (readable) until the writer says they are on disk. A journal whose queue is full stops
//! reading its exec's pipes, so a disk slower than the exec pushes back on the exec like a full
//! journal does. Jobs of one segment are written in the order they were queued (one thread, one
//! FIFO), which is what places each batch at the offset reserved for it.
use super::record::Record;
use super::spool::SegmentFile;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;

/// Called on the writer thread once a batch is on disk (or failed to get there).
pub type WriteDone = Box<dyn FnOnce(std::io::Result<()>) + Send>;

enum Job {
    Append {
        file: Arc<SegmentFile>,
        records: Vec<Record>,
        done: WriteDone,
    },
    /// An evicted segment's handle: its last close (which frees the blocks) happens here.
    Release(Arc<SegmentFile>),
}

/// The sending side; the thread ends when this is dropped and the queue is drained.
pub struct SpoolWriter {
    jobs: Option<mpsc::Sender<Job>>,
}

impl SpoolWriter {
    /// Starts the writer thread for segment files in `dir`. If the thread cannot start, every
    /// write fails (journals then keep only their memory tails) and runnerd says so.
    pub fn start(dir: PathBuf) -> SpoolWriter {
        let (tx, rx) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("spool-writer".into())
            // It only calls writev and a callback: a small stack is plenty.
            .stack_size(64 * 1024)
            .spawn(move || {
                for job in rx {
                    match job {
                        Job::Append {
                            file,
                            records,
                            done,
                        } => done(file.append(&dir, &records)),
                        Job::Release(file) => drop(file),
                    }
                }
            });
        match spawned {
            Ok(_) => SpoolWriter { jobs: Some(tx) },
            Err(err) => {
                tracing::error!(%err, "cannot start the journal spool writer; output beyond each exec's memory tail cannot be replayed");
                SpoolWriter { jobs: None }
            }
        }
    }

    /// Queues `records` for appending to `file`; `done` runs on the writer thread afterwards (or
    /// right here, with an error, if the writer is gone).
    pub fn append(&self, file: Arc<SegmentFile>, records: Vec<Record>, done: WriteDone) {
        let job = Job::Append {
            file,
            records,
            done,
        };
        let refused = match &self.jobs {
            Some(jobs) => jobs.send(job).err().map(|e| e.0),
            None => Some(job),
        };
        if let Some(Job::Append { done, .. }) = refused {
            done(Err(std::io::Error::other(
                "the spool writer thread is gone",
            )));
        }
    }

    /// Lets the writer thread drop `file`'s handle (closing an evicted segment may free megabytes
    /// of blocks: not on the runtime thread).
    pub fn release(&self, file: Arc<SegmentFile>) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Job::Release(file));
        }
    }
}
