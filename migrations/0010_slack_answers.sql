-- Answers to mentions read by polling: the intent is recorded before the answer is posted (with
-- the key `answer:{mention_ts}` as message metadata) and its ts after, so a mention read again
-- after a crash is answered once: a recorded ts means done, an intent without one is looked up
-- in the thread first.
CREATE TABLE slack_answers (
    channel     TEXT NOT NULL,
    mention_ts  TEXT NOT NULL,
    answer_ts   TEXT,
    PRIMARY KEY (channel, mention_ts)
);
