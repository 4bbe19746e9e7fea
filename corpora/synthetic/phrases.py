"""The phrase bank of the synthetic corpus.

Every sentence is one clause with no commas or other internal punctuation: flite inserts long
silences at punctuation and sentence breaks, and such a silence would be an unlabelled pause.
``tests/test_synthetic_corpus.py`` checks that no clip of any voice has an internal silence of
:data:`MAX_INTERNAL_SILENCE_S` or more.
"""

from __future__ import annotations

#: Longest silence allowed inside one synthesized phrase, in seconds.
MAX_INTERNAL_SILENCE_S = 0.35

#: Statements a speaker makes while holding the floor (one utterance each).
SENTENCES: tuple[str, ...] = (
    "I went to the market this morning to buy some fresh bread",
    "the train was late again so I missed the first half of the meeting",
    "my sister is moving to a small town near the coast next month",
    "we should probably book the tickets before the prices go up",
    "I have been trying to learn the guitar for about two years now",
    "the new library downtown has a really nice reading room upstairs",
    "our neighbors adopted a puppy and it barks all night long",
    "I think the weather will get much warmer by the end of the week",
    "the restaurant on the corner finally started serving breakfast",
    "my manager asked me to finish the report before friday afternoon",
    "we spent the whole weekend painting the kitchen a light green color",
    "the kids were excited about the school trip to the science museum",
    "I read an interesting article about bees and how they communicate",
    "the bus driver told us that the route changes next monday",
    "I usually go for a long walk in the park after dinner",
    "my brother bought an old car and he is fixing it himself",
    "the concert last night was much louder than I expected",
    "I need to call the dentist and move my appointment to tuesday",
    "we found a quiet little beach about an hour north of the city",
    "the garden looks amazing now that the roses are blooming",
    "I forgot my umbrella at the office and got completely soaked",
    "the new phone has a much better camera than my old one",
    "my grandmother makes the best apple pie I have ever tasted",
    "the traffic on the bridge was terrible during the morning rush",
    "I started cooking at home more often to save some money",
    "our team won the match in the very last minute of the game",
    "the museum is free on the first sunday of every month",
    "I was thinking about taking a cooking class this spring",
    "the hotel room had a beautiful view of the mountains",
    "my cousin is getting married in the summer on a small island",
    "I stayed up way too late watching that new detective series",
    "the shop around the corner sells really good coffee beans",
    "we are planning a road trip through the desert in october",
    "the printer at work broke down again in the middle of the day",
    "I finally finished reading the book you lent me last year",
    "the plumber said he could come by on thursday morning",
    "my friend just started a new job at a big software company",
    "the farmers market is much busier than it used to be",
    "I want to repaint the bedroom before my parents come to visit",
    "the flight was delayed for three hours because of the storm",
    "our old dog still loves to chase the ball in the yard",
    "I signed up for a swimming class at the community center",
    "the bakery near my house closes early on saturdays",
    "my roommate keeps leaving dirty dishes in the sink",
    "we watched the sunset from the top of the hill last evening",
    "the doctor told me to drink more water during the day",
    "I am trying to cut down on sugar and eat more vegetables",
    "the city is building a new bike lane along the river",
    "my laptop has been running really slowly since the update",
    "the neighbors are having a big party in their backyard tonight",
    "I lost my keys twice this week and found them in my coat",
    "the movie was good but the ending felt a little rushed",
    "we should invite the whole family over for dinner next sunday",
    "the hiking trail was much steeper than the map suggested",
    "I think I left the stove on when I walked out this morning",
    "my daughter wants to learn how to play the piano",
    "the coffee machine in the office makes a terrible noise",
    "we ran into an old friend from school at the grocery store",
    "the snow kept falling for two days without stopping",
    "I am going to visit my aunt in the countryside next weekend",
    "the new manager seems friendly and very well organized",
    "I ordered a blue sweater online but they sent me a red one",
    "the river was so high after the rain that the path was closed",
    "my father still writes letters to his old friends by hand",
    "the children built a huge sandcastle at the beach yesterday",
    "I really enjoy the quiet mornings before everyone wakes up",
    "the price of fresh fruit has gone up quite a lot this year",
    "we are thinking about getting solar panels for the roof",
    "the train station was crowded with people going home for the holiday",
    "I have to pick up my nephew from soccer practice at five",
)

#: Short listener responses (one or two words) said while the other speaker keeps talking.
BACKCHANNELS: tuple[str, ...] = (
    "yeah",
    "okay",
    "right",
    "uh huh",
    "I see",
    "sure",
    "mm hmm",
    "oh wow",
    "true",
    "exactly",
    "got it",
    "oh really",
)

#: Barge-in openers: the interrupting speaker takes the floor with one of these.
INTERRUPTIONS: tuple[str, ...] = (
    "wait sorry can I ask something",
    "hold on a second I have a question",
    "sorry to cut in but that sounds wrong",
    "wait what do you mean by that",
    "hang on I think I missed something",
    "excuse me can I jump in here",
    "sorry but I need to stop you there",
    "wait a moment that reminds me of something",
    "hold on did you just say that",
    "sorry can I add something quickly",
)
