package client

// oNoFollow is not defined on Windows; linkBlob's check that the opened file
// is the regular file it looked at stands for it there.
const oNoFollow = 0
